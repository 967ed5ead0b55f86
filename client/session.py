"""One run of the client on the service's WebSocket (docs/protocol.md).

It asks for every number, waits for the answers, and when the connection
drops (a server restart, a balancer moving it) reconnects with growing pauses
and asks again, by task id, for every answer it still waits for. On a stop
signal (client/stop.py) it sends ``cancel`` for every job it still waits for
and waits a moment for the answers, so that an interrupted client does not
leave work running that no one will read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass, field

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClosedError, websocket_connect

from client.progress import Progress
from client.stop import Stop

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
# After a stop signal, how long to wait for the cancels' answers, seconds:
# the client has exited within 2 s of the signal.
CANCEL_WAIT_S = 1.2
TIMED_OUT = "timeout"  # Job.missing when the deadline passed
# Job.cancel once the server answered a cancel: what became of the job (protocol: "cancelled").
CANCEL_OUTCOMES = {"stopped": "job stopped", "continues": "still computed for others", "ended": "had already ended"}
CANCEL_ASKED, CANCEL_UNANSWERED, CANCEL_NOT_SENT = "asked", "no_answer", "not_sent"

log = logging.getLogger("client")


class Unreachable(Exception):
    """The server could not be reached, or stayed unreachable after the connection dropped."""


class Refused(Exception):
    """The server refused the connection: the API key is missing, wrong, or not allowed."""


class Stopped(Exception):
    """A stop signal came while the client waited."""


@dataclass
class Job:
    number: int
    asked_at: float = field(default_factory=time.monotonic)
    task_id: str = ""
    state: str = "sent"
    answer: dict | None = None  # the final success or error message
    missing: str = ""  # why there is no answer, when there is none
    cancel: str = ""  # after a stop: CANCEL_ASKED, one of CANCEL_OUTCOMES, CANCEL_UNANSWERED or CANCEL_NOT_SENT
    ended_at: float = 0.0

    @property
    def elapsed_s(self) -> float:
        return (self.ended_at or time.monotonic()) - self.asked_at

    @property
    def done(self) -> bool:
        return self.answer is not None


async def compute(url: str, numbers: list[int], progress_for=None, timeout_s: float | None = DEFAULT_TIMEOUT_S,
                  headers: dict[str, str] | None = None, stop: Stop | None = None) -> list[Job]:
    """Ask for every number; return the jobs once all have ended, ``timeout_s`` has passed,
    the server stayed unreachable after the connection dropped, or ``stop`` was signalled
    (then every job still waited for has been cancelled, or tried to be).

    Jobs without an answer are returned with ``answer`` None and ``missing`` (or
    ``cancel``) saying why; ``Unreachable`` or ``Refused`` only when the first connection fails.
    """
    jobs = [Job(n) for n in numbers]
    progress = progress_for(jobs) if progress_for else Progress(jobs, quiet=True)
    session = Session(url, jobs, progress, headers or {}, stop)
    ticker = asyncio.ensure_future(_tick(progress))
    deadline = None if not timeout_s else time.monotonic() + timeout_s
    try:
        await session.run(deadline)
    finally:
        if stop is not None:
            stop.deaf()
        ticker.cancel()
        progress.close()
        session.close()
    for job in jobs:
        if not job.done and not job.cancel:
            job.state, job.missing = "no answer", session.missing
    return jobs


class Session:
    """The jobs of one run and the connection they are asked on; ``ref`` (a job's index) matches answers to jobs."""

    def __init__(self, url: str, jobs: list[Job], progress: Progress, headers: dict[str, str], stop: Stop | None):
        self.url = url
        self.jobs = jobs
        self.progress = progress
        self.headers = headers
        self.stop = stop
        self.connection = None
        self.missing = TIMED_OUT  # why jobs without an answer have none, if the run ends without a stop
        self._reading: asyncio.Future | None = None  # the read in progress, kept across a stop
        self._stopped: asyncio.Future | None = None  # done when a stop signal came, while one is listened for

    async def run(self, deadline: float | None) -> None:
        if self.stop is not None:
            self.stop.listen()
            self._stopped = asyncio.ensure_future(self.stop.wait())
        try:
            self.connection = await self._unless_stopped(self._connect())
        except Stopped:
            for job in self.jobs:
                job.cancel, job.missing = CANCEL_NOT_SENT, "not asked: stopped before the server was reached"
            return
        try:
            await self._wait(deadline)
        except Stopped:
            self._stopped = None
            await self._withdraw()
        finally:
            if self._stopped is not None:
                self._stopped.cancel()

    def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        if self.connection is not None:
            self.connection.close()

    # --- waiting for the answers ---------------------------------------------

    async def _wait(self, deadline: float | None) -> None:
        await self._ask()
        # Reconnects in a row with no message between them: a server that
        # accepts and drops at once still runs out of tries.
        failures = 0
        while not all(job.done for job in self.jobs):
            try:
                raw = await self._read(_left(deadline))
            except asyncio.TimeoutError:
                return
            if raw is not None:
                failures = 0
                self._take(json.loads(raw))
                continue
            lost = self.connection.close_code or "no code"
            self.connection = None
            try:
                self.connection, failures = await self._reconnect(failures, lost, deadline)
            except Unreachable as exc:
                self.missing = str(exc)
                return
            if self.connection is None:
                return  # the deadline passed while reconnecting
            await self._ask()

    async def _connect(self):
        request = HTTPRequest(self.url, headers=self.headers, connect_timeout=CONNECT_TIMEOUT_S,
                              request_timeout=CONNECT_TIMEOUT_S)
        try:
            return await websocket_connect(request, max_message_size=MAX_MESSAGE_BYTES)
        except HTTPClientError as exc:
            if exc.code in (401, 403):
                raise Refused(f"{self.url} refused the connection (HTTP {exc.code}): "
                              f"{_error_text(exc) or 'unauthorized'}") from None
            raise Unreachable(f"cannot connect to {self.url}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - every other way of failing to connect means the same to a user
            raise Unreachable(f"cannot connect to {self.url}: {exc or type(exc).__name__}; "
                              "is the server running?") from None

    async def _reconnect(self, failures: int, lost, deadline: float | None):
        """A new connection after one dropped; (None, failures) if the deadline passes first."""
        while True:
            if failures >= RECONNECT_TRIES:
                raise Unreachable(f"the connection to {self.url} dropped ({lost}) "
                                  f"and {failures} tries to reconnect failed")
            # Full jitter: clients of a restarted server do not all come back at once.
            pause = random.uniform(0.5, 1) * min(RECONNECT_MIN_S * 2**failures, RECONNECT_MAX_S)
            failures += 1
            self.progress.note(f"connection lost ({lost}); reconnecting in {pause:.1f} s")
            if deadline is not None and time.monotonic() + pause >= deadline:
                return None, failures
            await self._unless_stopped(asyncio.sleep(pause))
            try:
                return await self._unless_stopped(self._connect(), _left(deadline)), failures
            except asyncio.TimeoutError:
                return None, failures
            except Refused as exc:
                raise Unreachable(str(exc)) from None  # trying again cannot help
            except Unreachable as exc:
                lost = exc

    async def _ask(self) -> None:
        """Ask for every job still without an answer: by task id once it has one, else by number."""
        for ref, job in enumerate(self.jobs):
            if job.done:
                continue
            if job.task_id:
                message = {"type": "result", "task_id": job.task_id, "ref": ref}
            else:
                message = {"type": "factorial", "number": job.number, "ref": ref}
            if not await self._send(message):
                return  # the read that follows sees the close, and reconnects

    def _take(self, message: dict) -> Job | None:
        """Record an answer; return its job, or None when it is not about one (or not news)."""
        ref = message.get("ref")
        if not isinstance(ref, int) or not 0 <= ref < len(self.jobs):
            log.debug("Ignoring a message without a ref of ours: %s", message.get("type"))
            return None
        job = self.jobs[ref]
        if job.done:
            return None  # asked again after a reconnect, and answered twice: the first answer stands
        kind = message.get("type")
        job.task_id = message.get("task_id", job.task_id)
        if kind in ("result", "status"):
            job.state = message.get("status", job.state)
            if job.state == "finished":
                return job  # the success follows at once
        elif kind in ("success", "error"):
            job.state = "done" if kind == "success" else f"error ({message.get('code')})"
            job.answer = message
            job.ended_at = time.monotonic()
        elif kind == "cancelled":
            job.cancel = message.get("job", "")
            job.state = f"cancelled ({CANCEL_OUTCOMES.get(job.cancel, job.cancel)})"
            job.ended_at = time.monotonic()
            return job  # reported once, at the end, not as progress
        self.progress.changed(job)
        return job

    # --- stopping -----------------------------------------------------------

    async def _withdraw(self) -> None:
        """After a stop signal: cancel every job still waited for, and wait a little for the answers."""
        deadline = self.stop.at + CANCEL_WAIT_S
        waiting = [(ref, job) for ref, job in enumerate(self.jobs) if not job.done]
        if not waiting:
            return
        self.progress.note(f"stopping: cancelling {len(waiting)} job(s); stop again to quit at once")
        # A job not acknowledged yet gets its task id on this connection, in
        # order, and is cancelled then; on a new connection it never will.
        acknowledgements_come = self.connection is not None
        if self.connection is None:  # dropped, and not back yet: one try
            try:
                self.connection = await asyncio.wait_for(self._connect(), _left(deadline))
            except (asyncio.TimeoutError, Unreachable, Refused) as exc:
                for _, job in waiting:
                    job.cancel, job.missing = CANCEL_NOT_SENT, f"not cancelled: {exc or 'no connection in time'}"
                return
        for ref, job in waiting:
            if job.task_id:
                await self._cancel(ref, job)

        def still_expected(job: Job) -> bool:
            return not job.done and (job.cancel == CANCEL_ASKED or (not job.cancel and acknowledgements_come))

        while any(still_expected(job) for _, job in waiting):
            try:
                raw = await self._read(_left(deadline))
            except asyncio.TimeoutError:
                break
            if raw is None:
                break
            message = json.loads(raw)
            job = self._take(message)
            if job is not None and job.task_id and not job.cancel and not job.done:
                await self._cancel(message["ref"], job)  # its acknowledgement just came
        for _, job in waiting:
            if job.done or job.cancel in CANCEL_OUTCOMES:
                continue
            if job.cancel == CANCEL_ASKED:
                job.cancel, job.missing = CANCEL_UNANSWERED, f"cancel sent, no answer within {CANCEL_WAIT_S:g} s"
            else:
                job.cancel, job.missing = CANCEL_NOT_SENT, "not cancelled: no task id came for it"

    async def _cancel(self, ref: int, job: Job) -> None:
        job.cancel = CANCEL_ASKED
        await self._send({"type": "cancel", "task_id": job.task_id, "ref": ref})

    # --- the connection -----------------------------------------------------

    async def _send(self, message: dict) -> bool:
        try:
            await self.connection.write_message(json.dumps(message))
            return True
        except WebSocketClosedError:
            return False

    async def _read(self, timeout: float | None):
        """The next message, None when the connection closed; raises Stopped, or asyncio.TimeoutError.

        The read outlives a stop, so no message is lost to it.
        """
        if self._reading is None:
            self._reading = asyncio.ensure_future(self.connection.read_message())
        raw = await self._unless_stopped(self._reading, timeout, keep=True)
        self._reading = None
        return raw

    async def _unless_stopped(self, awaitable, timeout: float | None = None, keep: bool = False):
        """``awaitable``'s result; raises Stopped when a stop comes first, asyncio.TimeoutError after ``timeout``.

        Either way the awaitable is cancelled, unless ``keep``.
        """
        task = asyncio.ensure_future(awaitable)
        waits = {task} if self._stopped is None else {task, self._stopped}
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        if not keep:
            task.cancel()
        if done:
            raise Stopped
        raise asyncio.TimeoutError


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0)


def _error_text(exc: HTTPClientError) -> str:
    """The protocol error's text in a refusal's body, if it has one."""
    try:
        return json.loads(exc.response.body)["result"]
    except Exception:  # noqa: BLE001 - no body, not JSON, not an error message: there is no text
        return ""


async def _tick(progress: Progress) -> None:
    while True:
        progress.redraw()
        await asyncio.sleep(PROGRESS_EVERY_S)
