"""Ctrl-C (SIGINT) and SIGTERM: the first asks the waiting client to cancel its jobs and stop; a second ends it at once.

A shell reports a program that a signal stopped as 128 + the signal's number
(130 for SIGINT, 143 for SIGTERM), and this client exits with the same.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_status(signum: int) -> int:
    return 128 + signum


class Stop:
    """The first stop signal, for the event loop to act on; any signal while no loop listens ends the process."""

    def __init__(self):
        self.signum = 0  # the first signal received, 0 if none
        self.at = 0.0  # when it came (time.monotonic())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def install(self) -> None:
        # Plain signal handlers, not loop.add_signal_handler: they also cover the
        # time before and after the loop runs, when there is nothing to cancel.
        for signum in SIGNALS:
            signal.signal(signum, self._received)

    def listen(self) -> None:
        """From now on, the running loop handles the first signal (``wait`` returns)."""
        self._event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self.signum:
            self._event.set()

    def deaf(self) -> None:
        """The loop stops listening: a signal from now on ends the process at once."""
        self._loop = None

    @property
    def requested(self) -> bool:
        return bool(self.signum)

    async def wait(self) -> None:
        await self._event.wait()

    def _received(self, signum: int, frame) -> None:
        if self.signum or self._loop is None:
            self._exit_now(signum)
        self.signum, self.at = signum, time.monotonic()
        # A Python signal handler runs in the main thread between bytecodes;
        # this wakes the loop if it sleeps in select().
        self._loop.call_soon_threadsafe(self._event.set)

    def _exit_now(self, signum: int) -> None:
        if self.signum:
            os.write(2, b"stopped again: exiting without waiting for the cancels' answers\n")
        # os._exit: no flushing of buffers that a half-written result may sit in, no waiting for anything.
        os._exit(exit_status(signum))
