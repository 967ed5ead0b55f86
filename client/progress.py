"""Job states on stderr while the client waits: one redrawn line on a terminal, a line per change otherwise."""

from __future__ import annotations

import sys


class Progress:
    """Shows the states of ``jobs`` (objects with ``number``, ``state`` and ``elapsed_s``)."""

    def __init__(self, jobs: list, stream=sys.stderr, quiet: bool = False):
        self.jobs = jobs
        self.stream = stream
        self.quiet = quiet
        self.tty = stream.isatty()

    def changed(self, job) -> None:
        if not self.quiet and not self.tty:
            self.stream.write(f"{job.number}!: {job.state} after {job.elapsed_s:.1f} s\n")
            self.stream.flush()

    def redraw(self) -> None:
        if not self.quiet and self.tty:
            line = "  ".join(f"{j.number}!: {j.state} {j.elapsed_s:.1f}s" for j in self.jobs)
            self.stream.write("\r\x1b[K" + line)
            self.stream.flush()

    def note(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if not self.quiet and self.tty:
            self.redraw()
            self.stream.write("\n")
            self.stream.flush()
