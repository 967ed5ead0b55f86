"""Ask the service for factorials from a shell, and wait for the answers.

    python -m client 5                       # prints 120
    python -m client 100000 --out f.txt      # writes the 456574 digits to f.txt
    python -m client 5 10 20 --json          # one JSON object per number, per line
    python -m client 100000 200000 --out 'fact-{n}.txt'

Progress (each job's state and elapsed time) goes to stderr; stdout holds only
results. When the connection drops (a server restart, a balancer moving it),
the client reconnects with growing pauses and asks again, by task id, for
every answer it still waits for.

Exit status:
    0  every number got its result
    1  the server answered an error for some number
    2  bad arguments
    3  the server could not be reached, or stayed unreachable after the connection
       dropped (the answers that came are still written)
    4  some answer did not come within --timeout
  141  stdout was closed before the results were written (``| head``), as for other Unix tools
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field

from tornado.websocket import WebSocketClosedError, websocket_connect

DEFAULT_URL = "ws://localhost:8888/ws"
# 1,000,000! is a 5.6 MB message.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# How often the progress line is redrawn on a terminal, seconds.
PROGRESS_EVERY_S = 0.2
# Long enough for a queue of hard jobs (60 s each at most) to drain; short
# enough that a lost answer does not keep a script waiting for ever.
DEFAULT_TIMEOUT_S = 300.0
CONNECT_TIMEOUT_S = 10.0
# After a dropped connection: this many tries in a row without an answer, the
# pause before each doubling from RECONNECT_MIN_S up to RECONNECT_MAX_S (about 30 s in all).
RECONNECT_TRIES = 8
RECONNECT_MIN_S = 0.25
RECONNECT_MAX_S = 8.0
EXIT_OK, EXIT_ERROR_ANSWER, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TIMEOUT = 0, 1, 2, 3, 4
TIMED_OUT = "timeout"  # Job.missing when the deadline passed
EXIT_PIPE_CLOSED = 128 + 13  # SIGPIPE's number, as a shell reports a tool it ended

log = logging.getLogger("client")


class Unreachable(Exception):
    """The server could not be reached, or stayed unreachable after the connection dropped."""


@dataclass
class Job:
    number: int
    asked_at: float = field(default_factory=time.monotonic)
    task_id: str = ""
    state: str = "sent"
    answer: dict | None = None  # the final success or error message
    missing: str = ""  # why there is no answer, when there is none
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

    def note(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if not self.quiet and self.tty:
            self.redraw()
            self.stream.write("\n")
            self.stream.flush()


async def compute(url: str, numbers: list[int], progress_for=None,
                  timeout_s: float | None = DEFAULT_TIMEOUT_S) -> list[Job]:
    """Ask for every number; return the jobs once all have ended, ``timeout_s`` has passed
    or the server stayed unreachable after the connection dropped.

    Jobs without an answer are returned with ``answer`` None and ``missing`` saying why;
    ``Unreachable`` only when the first connection fails.
    """
    connection = await _connect(url)
    jobs = [Job(n) for n in numbers]
    progress = progress_for(jobs) if progress_for else Progress(jobs, quiet=True)
    ticker = asyncio.ensure_future(_tick(progress))
    deadline = None if not timeout_s else time.monotonic() + timeout_s
    missing = TIMED_OUT
    try:
        await _ask(connection, jobs)
        # Reconnects in a row with no message between them: a server that
        # accepts and drops at once still runs out of tries.
        failures = 0
        while not all(job.done for job in jobs):
            try:
                raw = await asyncio.wait_for(connection.read_message(), _left(deadline))
            except asyncio.TimeoutError:
                break
            if raw is not None:
                failures = 0
                _take(json.loads(raw), jobs, progress)
                continue
            lost = connection.close_code or "no code"
            try:
                connection, failures = await _reconnect(url, failures, lost, deadline, progress)
            except Unreachable as exc:
                connection, missing = None, str(exc)
                break
            if connection is None:
                break  # the deadline passed while reconnecting
            await _ask(connection, jobs)
    finally:
        ticker.cancel()
        progress.close()
        if connection is not None:
            connection.close()
    for job in jobs:
        if not job.done:
            job.state, job.missing = "no answer", missing
    return jobs


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0)


async def _connect(url: str):
    try:
        return await websocket_connect(url, max_message_size=MAX_MESSAGE_BYTES, connect_timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - every way of failing to connect means the same to a user
        raise Unreachable(f"cannot connect to {url}: {exc or type(exc).__name__}; is the server running?") from None


async def _reconnect(url: str, failures: int, lost, deadline: float | None, progress: Progress):
    """A new connection after one dropped; (None, failures) if the deadline passes first."""
    while True:
        if failures >= RECONNECT_TRIES:
            raise Unreachable(f"the connection to {url} dropped ({lost}) and {failures} tries to reconnect failed")
        # Full jitter: clients of a restarted server do not all come back at once.
        pause = random.uniform(0.5, 1) * min(RECONNECT_MIN_S * 2**failures, RECONNECT_MAX_S)
        failures += 1
        progress.note(f"connection lost ({lost}); reconnecting in {pause:.1f} s")
        if deadline is not None and time.monotonic() + pause >= deadline:
            return None, failures
        await asyncio.sleep(pause)
        try:
            return await asyncio.wait_for(_connect(url), _left(deadline)), failures
        except asyncio.TimeoutError:
            return None, failures
        except Unreachable as exc:
            lost = exc


async def _ask(connection, jobs: list[Job]) -> None:
    """Ask for every job still without an answer: by task id once it has one, else by number.

    "ref" (the job's index) matches every answer to its request.
    """
    for ref, job in enumerate(jobs):
        if job.done:
            continue
        if job.task_id:
            message = {"type": "result", "task_id": job.task_id, "ref": ref}
        else:
            message = {"type": "factorial", "number": job.number, "ref": ref}
        try:
            await connection.write_message(json.dumps(message))
        except WebSocketClosedError:
            return  # the read that follows sees the close, and reconnects


def _take(message: dict, jobs: list[Job], progress: Progress) -> None:
    ref = message.get("ref")
    if not isinstance(ref, int) or not 0 <= ref < len(jobs):
        log.debug("Ignoring a message without a ref of ours: %s", message.get("type"))
        return
    job = jobs[ref]
    if job.done:
        return  # asked again after a reconnect, and answered twice: the first answer stands
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
        if answer is None:
            if job.missing == TIMED_OUT:
                status, code, why = max(status, EXIT_TIMEOUT), "no_answer", f"no answer within {args.timeout:g} s"
            else:
                status, code, why = max(status, EXIT_UNREACHABLE), "unreachable", f"no answer: {job.missing}"
            print(f"{job.number}!: {why}" + (f" (task {job.task_id})" if job.task_id else ""), file=sys.stderr)
            if args.json:
                print(json.dumps({"number": job.number, "task_id": job.task_id, "error": code,
                                  "elapsed_s": round(job.elapsed_s, 3)}))
            continue
        if answer["type"] == "error":
            status = max(status, EXIT_ERROR_ANSWER)
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
    parser = argparse.ArgumentParser(
        prog="python -m client", description="Compute factorials on the service.",
        epilog="exit status: 0 every result came, 1 the server answered an error, 2 bad arguments, "
               "3 the server could not be reached, 4 an answer did not come within --timeout",
    )
    parser.add_argument("numbers", nargs="+", type=int, metavar="N", help="the numbers whose factorials to compute")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the service's WebSocket (default {DEFAULT_URL})")
    parser.add_argument("--out", metavar="FILE",
                        help="write the digits to FILE instead of stdout; with several numbers, FILE must contain {n}")
    parser.add_argument("--json", action="store_true", help="print one JSON object per number, per line")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help="stop waiting for answers S seconds after asking, reconnects included "
                             f"(default {DEFAULT_TIMEOUT_S:g}; 0 waits for ever)")
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
    try:
        status = report(jobs, args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader has gone (``| head``): stop quietly. Python would try to
        # flush stdout again at exit and complain, so point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_PIPE_CLOSED)
    sys.exit(status)
