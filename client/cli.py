"""Ask the service for factorials from a shell, and wait for the answers.

    python -m client 5                       # prints 120
    python -m client 100000 --out f.txt      # writes the 456574 digits to f.txt
    python -m client 5 10 20 --json          # one JSON object per number, per line
    python -m client 100000 200000 --out 'fact-{n}.txt'

Progress (each job's state and elapsed time) goes to stderr; stdout holds only
results. Exit status: 0 when every number got its result, 1 when the server
answered an error for some, 2 when it could not be reached or went away.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from dataclasses import dataclass, field

from tornado.websocket import websocket_connect

DEFAULT_URL = "ws://localhost:8888/ws"
# 1,000,000! is a 5.6 MB message.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# How often the progress line is redrawn on a terminal, seconds.
PROGRESS_EVERY_S = 0.2
EXIT_OK, EXIT_ERROR_ANSWER, EXIT_UNREACHABLE = 0, 1, 2

log = logging.getLogger("client")


class Unreachable(Exception):
    """The server could not be reached, or closed the connection."""


@dataclass
class Job:
    number: int
    asked_at: float = field(default_factory=time.monotonic)
    task_id: str = ""
    state: str = "sent"
    answer: dict | None = None  # the final success or error message
    ended_at: float = 0.0

    @property
    def elapsed_s(self) -> float:
        return (self.ended_at or time.monotonic()) - self.asked_at

    @property
    def done(self) -> bool:
        return self.answer is not None


class Progress:
    """Job states on stderr: one redrawn line on a terminal, a line per change otherwise."""

    def __init__(self, jobs: list[Job], stream=sys.stderr, quiet: bool = False):
        self.jobs = jobs
        self.stream = stream
        self.quiet = quiet
        self.tty = stream.isatty()

    def changed(self, job: Job) -> None:
        if not self.quiet and not self.tty:
            self.stream.write(f"{job.number}!: {job.state} after {job.elapsed_s:.1f} s\n")
            self.stream.flush()

    def redraw(self) -> None:
        if not self.quiet and self.tty:
            line = "  ".join(f"{j.number}!: {j.state} {j.elapsed_s:.1f}s" for j in self.jobs)
            self.stream.write("\r\x1b[K" + line)
            self.stream.flush()

    def close(self) -> None:
        if not self.quiet and self.tty:
            self.redraw()
            self.stream.write("\n")
            self.stream.flush()


async def compute(url: str, numbers: list[int], progress_for=None, timeout_s: float | None = None) -> list[Job]:
    """Ask for every number on one connection; return the jobs once all have ended."""
    try:
        connection = await websocket_connect(url, max_message_size=MAX_MESSAGE_BYTES, connect_timeout=10)
    except Exception as exc:  # noqa: BLE001 - every way of failing to connect means the same to a user
        raise Unreachable(f"cannot connect to {url}: {exc or type(exc).__name__}; is the server running?") from None
    jobs = [Job(n) for n in numbers]
    progress = progress_for(jobs) if progress_for else Progress(jobs, quiet=True)
    ticker = asyncio.ensure_future(_tick(progress))
    try:
        for ref, job in enumerate(jobs):
            # "ref" (the job's index) matches every answer to its request.
            await connection.write_message(json.dumps({"type": "factorial", "number": job.number, "ref": ref}))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not all(job.done for job in jobs):
            left = None if deadline is None else max(deadline - time.monotonic(), 0)
            try:
                raw = await asyncio.wait_for(connection.read_message(), left)
            except asyncio.TimeoutError:
                raise Unreachable(f"no answer within {timeout_s} s") from None
            if raw is None:
                raise Unreachable(f"the server closed the connection ({connection.close_code or 'no code'})")
            _take(json.loads(raw), jobs, progress)
    finally:
        ticker.cancel()
        progress.close()
        connection.close()
    return jobs


def _take(message: dict, jobs: list[Job], progress: Progress) -> None:
    ref = message.get("ref")
    if not isinstance(ref, int) or not 0 <= ref < len(jobs):
        log.debug("Ignoring a message without a ref of ours: %s", message.get("type"))
        return
    job = jobs[ref]
    kind = message.get("type")
    job.task_id = message.get("task_id", job.task_id)
    if kind in ("result", "status"):
        job.state = message.get("status", job.state)
        if job.state == "finished":
            return  # the success follows at once
    elif kind in ("success", "error"):
        job.state = "done" if kind == "success" else f"error ({message.get('code')})"
        job.answer = message
        job.ended_at = time.monotonic()
    progress.changed(job)


async def _tick(progress: Progress) -> None:
    while True:
        progress.redraw()
        await asyncio.sleep(PROGRESS_EVERY_S)


def digits_of(success: dict) -> str:
    """The result's decimal digits: a JSON string for big results, a number for small ones."""
    result = success["result"]
    return result if isinstance(result, str) else str(result)


def report(jobs: list[Job], args) -> int:
    status = EXIT_OK
    for job in jobs:
        answer = job.answer
        if answer["type"] == "error":
            status = EXIT_ERROR_ANSWER
            print(f"{job.number}!: the server answered {answer.get('code')}: {answer.get('result')}", file=sys.stderr)
            if args.json:
                print(json.dumps({"number": job.number, "task_id": job.task_id, "error": answer.get("code"),
                                  "message": answer.get("result"), "elapsed_s": round(job.elapsed_s, 3)}))
            continue
        digits = digits_of(answer)
        out = args.out.replace("{n}", str(job.number)) if args.out else None
        if out:
            with open(out, "w", encoding="ascii") as file:
                file.write(digits + "\n")
        if args.json:
            line = {"number": job.number, "task_id": job.task_id, "digits": answer["digits"],
                    "elapsed_s": round(job.elapsed_s, 3)}
            line.update({"file": out} if out else {"result": digits})
            print(json.dumps(line))
        elif not out:
            print(digits)
        else:
            print(f"{job.number}!: {answer['digits']} digits written to {out}", file=sys.stderr)
    return status


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m client", description="Compute factorials on the service.")
    parser.add_argument("numbers", nargs="+", type=int, metavar="N", help="the numbers whose factorials to compute")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the service's WebSocket (default {DEFAULT_URL})")
    parser.add_argument("--out", metavar="FILE",
                        help="write the digits to FILE instead of stdout; with several numbers, FILE must contain {n}")
    parser.add_argument("--json", action="store_true", help="print one JSON object per number, per line")
    parser.add_argument("--timeout", type=float, default=None, metavar="S", help="give up after S seconds")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    if args.out and len(args.numbers) > 1 and "{n}" not in args.out:
        parser.error("with several numbers, --out needs {n} in the file name, e.g. --out 'fact-{n}.txt'")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        jobs = asyncio.run(compute(args.url, args.numbers, lambda jobs: Progress(jobs, quiet=args.quiet),
                                   args.timeout))
    except Unreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_UNREACHABLE)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(report(jobs, args))
