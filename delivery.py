"""Pushing each job's answer to every connection waiting for it.

One ``PeriodicCallback`` per server process. Each tick reads the job events
that arrived since the last tick (waiting inside Redis, on a thread, for up
to ``delivery_wait_ms`` when there are none), so its cost follows the number
of jobs that ended, not the number of connections waiting. A slower sweep
checks every waited-for job, for ends that sent no event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Hashable, Iterable, Protocol

from tornado.ioloop import PeriodicCallback

import protocol
from jobs import events as job_events
from jobs.store import FAILED, FINISHED, MISSING, STARTED, Event, JobState
from protocol import ErrorCode, ProtocolError
from settings import Settings
from tasks import TaskClient

log = logging.getLogger(__name__)

# A job event is remembered this long, for connections that start waiting for
# the job just after its event was read.
RECENT_EVENTS_S = 30.0
# After Redis could not be reached, wait this long before trying again.
RETRY_AFTER_S = 0.5
# Hand control back to the IOLoop after writing this many bytes, so a big
# result sent to many connections never holds the loop for long.
WRITE_SLICE_BYTES = 4 * 1024 * 1024


class Subscriber(Hashable, Protocol):
    def send(self, frame: bytes | str) -> int:
        """Write one frame; return the bytes written, 0 if the connection is gone."""


class ResultDelivery:
    def __init__(self, tasks: TaskClient, settings: Settings):
        self.tasks = tasks
        self.settings = settings
        self._waiting: dict[str, dict[Subscriber, list]] = {}
        self._by_subscriber: dict[Subscriber, set[str]] = {}
        self._started: set[str] = set()  # jobs whose start was already pushed
        self._recent: OrderedDict[str, tuple[Event, float]] = OrderedDict()
        self._cursor: str | None = None
        self._next_sweep = 0.0
        self._retry_at = 0.0
        self._callback = PeriodicCallback(self._tick, 1)

    # --- the API the handlers use -------------------------------------------

    def watch(self, task_id: str, subscriber: Subscriber, ref=None, state: str = "") -> None:
        """Send ``subscriber`` the job's result (or error) when it ends."""
        self._waiting.setdefault(task_id, {}).setdefault(subscriber, []).append(ref)
        self._by_subscriber.setdefault(subscriber, set()).add(task_id)
        if state == STARTED:
            self._started.add(task_id)
        recent = self._recent.get(task_id)
        if recent is not None:
            # Its event was read before this watch began: act on it now.
            asyncio.ensure_future(self._settle([recent[0]]))

    def forget(self, subscriber: Subscriber) -> None:
        """Drop every wait of a closed connection."""
        for task_id in self._by_subscriber.pop(subscriber, ()):
            waiters = self._waiting.get(task_id)
            if waiters is not None:
                waiters.pop(subscriber, None)
                if not waiters:
                    del self._waiting[task_id]
                    self._started.discard(task_id)

    def waits_of(self, subscriber: Subscriber) -> int:
        return len(self._by_subscriber.get(subscriber, ()))

    @property
    def waiting_jobs(self) -> int:
        return len(self._waiting)

    @property
    def waiting_subscribers(self) -> int:
        return len(self._by_subscriber)

    def start(self) -> None:
        self._callback.start()

    def stop(self) -> None:
        self._callback.stop()

    # --- the periodic callback ----------------------------------------------

    async def _tick(self) -> None:
        now = time.monotonic()
        if now < self._retry_at:
            return
        try:
            if self._cursor is None:
                self._cursor = await self.tasks.events_cursor()
            self._cursor, found, payloads = await self.tasks.read_events(
                self._cursor, self.settings.delivery_wait_ms, self._waiting
            )
            self._remember(found)
            await self._settle((e for e in found if e.task_id in self._waiting), payloads)
            if self._waiting and time.monotonic() >= self._next_sweep:
                self._next_sweep = time.monotonic() + self.settings.sweep_interval_s
                await self._sweep()
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any failure
            log.warning("Delivery could not reach Redis (%s); retrying in %.1f s", exc, RETRY_AFTER_S)
            self._retry_at = time.monotonic() + RETRY_AFTER_S

    def _remember(self, found: list[Event]) -> None:
        now = time.monotonic()
        for event in found:
            self._recent[event.task_id] = (event, now)
            self._recent.move_to_end(event.task_id)
        while self._recent:
            _, (_, seen) = next(iter(self._recent.items()))
            if now - seen < RECENT_EVENTS_S:
                break
            self._recent.popitem(last=False)

    async def _settle(self, found: Iterable[Event], fetched: dict[str, bytes] | None = None) -> None:
        """Act on job events: push a start, or deliver an end (``fetched``: payloads already read)."""
        finished = []
        for event in found:
            if event.state == job_events.FINISHED:
                finished.append(event.task_id)
            elif event.state == job_events.FAILED:
                code = ErrorCode(event.code) if event.code in ErrorCode._value2member_map_ else ErrorCode.JOB_FAILED
                await self._finish(event.task_id, error=ProtocolError(code, event.text, task_id=event.task_id))
            elif event.state == job_events.STARTED:
                self._push_started(event.task_id)
        if finished:
            fetched = fetched or {}
            payloads = {t: fetched[t] for t in finished if t in fetched}
            missing = [t for t in finished if t not in fetched]
            if missing:
                payloads.update(await self.tasks.payloads(missing))
            for task_id, payload in payloads.items():
                await self._finish(task_id, payload=payload)

    async def _sweep(self) -> None:
        states = await self.tasks.states(list(self._waiting))
        for state in states.values():
            await self._settle_state(state)

    async def _settle_state(self, state: JobState) -> None:
        if state.status == FINISHED and state.payload:
            await self._finish(state.task_id, payload=state.payload)
        elif state.status == FAILED:
            await self._finish(state.task_id, error=state.error)
        elif state.status == MISSING:
            await self._finish(
                state.task_id,
                error=ProtocolError(
                    ErrorCode.JOB_FAILED, "the job is gone from the queue (deleted or expired)", task_id=state.task_id
                ),
            )
        elif state.status == STARTED:
            self._push_started(state.task_id)

    def _push_started(self, task_id: str) -> None:
        if task_id in self._started or task_id not in self._waiting:
            return
        self._started.add(task_id)
        for subscriber, refs in list(self._waiting[task_id].items()):
            for ref in refs:
                subscriber.send(protocol.status(task_id, STARTED, ref))

    async def _finish(self, task_id: str, payload: bytes | None = None, error: ProtocolError | None = None) -> None:
        waiters = self._waiting.pop(task_id, None)
        self._started.discard(task_id)
        if not waiters:
            return
        written = 0
        for subscriber, refs in waiters.items():
            ids = self._by_subscriber.get(subscriber)
            if ids is not None:
                ids.discard(task_id)
                if not ids:
                    del self._by_subscriber[subscriber]
            for ref in refs:
                frame = protocol.with_ref(payload, ref) if payload is not None else protocol.error(error, ref)
                written += subscriber.send(frame)
            delivered = getattr(subscriber, "delivered", None)
            if delivered is not None:  # metrics: the socket handler times its own requests
                delivered(task_id, "success" if payload is not None else error.code.value)
            if written >= WRITE_SLICE_BYTES:
                written = 0
                await asyncio.sleep(0)
