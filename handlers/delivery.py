"""Pushing each job's answer to every connection waiting for it.

One ``PeriodicCallback`` per server process. Each tick reads the job events
that arrived since the last tick (waiting inside Redis, on a thread, for up
to ``delivery_wait_ms`` when there are none), so its cost follows the number
of jobs that ended, not the number of connections waiting. A slower sweep
checks every waited-for job, for ends that sent no event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Hashable, Iterable, Protocol

from tornado.ioloop import PeriodicCallback

import protocol
from jobs.gateway import JobGateway, RedisFull, spawn
from jobs.janitor import RUN_EVERY_S
from jobs.outage import OUTAGE_ERRORS
from jobs.routing import SOFT
from jobs.states import FINISHED, STARTED, Event, JobState
from jobs.store import Waits
from protocol import ProtocolError
from settings import Settings

if TYPE_CHECKING:
    from handlers.in_flight import Ticket

log = logging.getLogger(__name__)

# A job event is remembered this long, for connections that start waiting for
# the job just after its event was read.
RECENT_EVENTS_S = 30.0
# After Redis could not be reached, wait this long before trying again.
RETRY_AFTER_S = 0.5
# Each server rewrites its whole set of waited-for tasks this often; Redis
# drops the set this long after its last write (a dead server's waits).
WAITS_REWRITE_S = 1.0
WAITS_TTL_S = 5.0
# Hand control back to the IOLoop after this many frames or bytes written,
# counted across every job a tick delivers: a big result sent to many
# connections, or thousands of small ones ending together, never hold the
# loop for long (about 10 ms for 200 frames).
WRITE_SLICE_FRAMES = 200
WRITE_SLICE_BYTES = 4 * 1024 * 1024


class Subscriber(Hashable, Protocol):
    def send(self, frame: bytes | str, ref=None) -> int:
        """Send one frame, with ``ref`` added (protocol.with_ref) when given; return its size, 0 if the
        connection is gone (nothing more is sent to it)."""


@dataclasses.dataclass(frozen=True)
class Hold:
    """An HTTP client's accepted jobs, waited for here in its place: nothing is sent, and its
    requests stay in flight until their job ends or its DELETE (handlers/in_flight.py)."""

    client: str


class ResultDelivery:
    def __init__(self, jobs: JobGateway, settings: Settings):
        self.jobs = jobs
        self.settings = settings
        self._waiting: dict[str, dict[Subscriber, list]] = {}
        self._by_subscriber: dict[Subscriber, set[str]] = {}
        # The requests in flight each wait stands for, ended with it (handlers/in_flight.py).
        self._tickets: dict[tuple[str, Subscriber | Hold], list[Ticket]] = {}
        self._started: set[str] = set()  # jobs whose start was already pushed
        self._recent: OrderedDict[str, tuple[Event, float]] = OrderedDict()
        self._cursor: str | None = None
        self._next_sweep = 0.0
        self._retry_at = 0.0
        self._recovery: asyncio.Future | None = None
        self._next_recovery = 0.0
        self._callback = PeriodicCallback(self._tick, 1)
        # Held while a tick runs, so close() can wait for it.
        self._ticking = asyncio.Lock()
        # Which tasks this process's connections wait for, as other servers
        # see it (a cancel elsewhere stops a job only if no one waits here).
        self.server_id = uuid.uuid4().hex
        self._waits_added: set[str] = set()
        self._waits_removed: set[str] = set()
        # Tasks whose last waiter here left by closing its connection: candidates
        # for the stop of abandoned work (jobs/lua/abandon.lua), shared with the waits.
        self._waits_left: set[str] = set()
        self._waits_rewrite_at = 0.0
        # Frames and bytes written since the loop last had a turn (see WRITE_SLICE_FRAMES).
        self._slice_frames = 0
        self._slice_bytes = 0

    # --- the API the handlers use -------------------------------------------

    def watch(self, task_id: str, subscriber: Subscriber | Hold, ref=None, state: str = "",
              ticket: Ticket | None = None) -> None:
        """Send ``subscriber`` the job's result (or error) when it ends, and end ``ticket`` then."""
        if task_id not in self._waiting:
            self._waits_added.add(task_id)
            self._waits_removed.discard(task_id)
        self._waiting.setdefault(task_id, {}).setdefault(subscriber, []).append(ref)
        self._by_subscriber.setdefault(subscriber, set()).add(task_id)
        if ticket is not None:
            self._tickets.setdefault((task_id, subscriber), []).append(ticket)
        if state == STARTED:
            self._started.add(task_id)
        recent = self._recent.get(task_id)
        if recent is not None:
            # Its event was read before this watch began: act on it now.
            spawn(self._settle([recent[0]]), "Delivering an end read before its watch")

    def hold(self, task_id: str, client: str, ticket: Ticket) -> None:
        """Keep ``client``'s HTTP request (``ticket``) in flight until the job ends or ``release``."""
        self.watch(task_id, Hold(client), ticket=ticket)

    def release(self, task_id: str, client: str) -> None:
        """``client`` DELETEd the task: its HTTP requests for it are no longer in flight."""
        self.unwatch(task_id, Hold(client))

    def forget(self, subscriber: Subscriber) -> None:
        """Drop every wait of a closed connection.

        A task no one here waits for any more may be abandoned: its job is
        stopped after ABANDON_GRACE_S unless someone, anywhere, waits for it again.
        """
        for task_id in self._by_subscriber.pop(subscriber, ()):
            self._end_tickets(task_id, subscriber)
            waiters = self._waiting.get(task_id)
            if waiters is not None:
                waiters.pop(subscriber, None)
                if not waiters:
                    self._no_more_waits(task_id)
                    self._waits_left.add(task_id)

    def others_wait(self, task_id: str, subscriber: Subscriber) -> bool:
        """Whether a connection other than ``subscriber`` waits here for the task."""
        return any(other is not subscriber for other in self._waiting.get(task_id, ()))

    def unwatch(self, task_id: str, subscriber: Subscriber | Hold) -> None:
        """``subscriber`` waits no more for the task (it cancelled it): nothing more is sent to it about it."""
        ids = self._by_subscriber.get(subscriber)
        if ids is not None:
            ids.discard(task_id)
            if not ids:
                del self._by_subscriber[subscriber]
        self._end_tickets(task_id, subscriber)
        waiters = self._waiting.get(task_id)
        if waiters is not None:
            waiters.pop(subscriber, None)
            if not waiters:
                self._no_more_waits(task_id)

    def _end_tickets(self, task_id: str, subscriber: Subscriber | Hold) -> None:
        for ticket in self._tickets.pop((task_id, subscriber), ()):
            ticket.end()

    def _no_more_waits(self, task_id: str) -> None:
        del self._waiting[task_id]
        self._started.discard(task_id)
        self._waits_removed.add(task_id)
        self._waits_added.discard(task_id)

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

    async def close(self) -> None:
        """Stop, and wait for the tick and the orphan recovery under way, so no Redis call follows."""
        self.stop()
        async with self._ticking:
            pass
        if self._recovery is not None:
            await asyncio.gather(self._recovery, return_exceptions=True)

    # --- the periodic callback ----------------------------------------------

    async def _tick(self) -> None:
        async with self._ticking:
            await self._tick_once()

    async def _tick_once(self) -> None:
        now = time.monotonic()
        self._recover_orphans(now)
        if now < self._retry_at:
            return
        try:
            if self._cursor is None:
                self._cursor = await self.jobs.events_cursor()
            waits = self._waits_to_share(now)
            try:
                self._cursor, found, payloads = await self.jobs.sync_waits_and_read_events(
                    self._cursor, self.settings.delivery_wait_ms, self._waiting, waits
                )
            except BaseException:
                if waits is not None:
                    self._waits_rewrite_at = 0.0  # not shared: write it all again next time
                raise
            self._remember(found)
            await self._settle((e for e in found if e.task_id in self._waiting), payloads)
            if self._waiting and time.monotonic() >= self._next_sweep:
                self._next_sweep = time.monotonic() + self.settings.sweep_interval_s
                await self._sweep()
        except (*OUTAGE_ERRORS, RedisFull):  # logged once per outage (or full Redis) by the job gateway
            self._retry_at = time.monotonic() + RETRY_AFTER_S
        except Exception:  # noqa: BLE001 - a bug must not stop every delivery for good
            log.exception("Delivery tick failed; retrying in %.1f s", RETRY_AFTER_S)
            self.jobs.on_internal_error("delivery")
            self._retry_at = time.monotonic() + RETRY_AFTER_S

    def _waits_to_share(self, now: float) -> tuple[str, Waits] | None:
        """The changes to this process's waits since the last tick, and the whole set every WAITS_REWRITE_S.

        They go to Redis with the tick's event read, in its round trip. The
        entry expires WAITS_TTL_S after the last write, so a server that died
        stops counting as a waiter for cancels elsewhere.
        """
        rewrite = now >= self._waits_rewrite_at
        if not (rewrite or self._waits_added or self._waits_removed or self._waits_left):
            return None
        added, self._waits_added = self._waits_added, set()
        removed, self._waits_removed = self._waits_removed, set()
        left, self._waits_left = self._waits_left - self._waiting.keys(), set()
        everything = set(self._waiting) if rewrite else None
        if rewrite:
            self._waits_rewrite_at = now + WAITS_REWRITE_S
        return self.server_id, Waits(added, removed, everything, WAITS_TTL_S, left, self.settings.abandon_grace_s)

    def _recover_orphans(self, now: float) -> None:
        """Every server takes part in recovering jobs whose worker died: when every
        worker is gone, the servers, where the clients wait, still answer them."""
        if now < self._next_recovery or (self._recovery is not None and not self._recovery.done()):
            return
        self._next_recovery = now + RUN_EVERY_S
        self._recovery = spawn(self.jobs.recover_orphans(), "Recovering orphaned jobs")

    def _remember(self, found: list[Event]) -> None:
        now = time.monotonic()
        for event in found:
            if event.payload is not None:
                # Kept 30 s, at thousands per second: without the result it carried
                # (a late watcher's delivery reads it again from Redis).
                event = dataclasses.replace(event, payload=None)
            self._recent[event.task_id] = (event, now)
            self._recent.move_to_end(event.task_id)
        while self._recent:
            _, (_, seen) = next(iter(self._recent.items()))
            if now - seen < RECENT_EVENTS_S:
                break
            self._recent.popitem(last=False)

    async def _settle(self, found: Iterable[Event], fetched: dict[str, bytes] | None = None) -> None:
        """Act on job events: push a start, or deliver an end (``fetched``: payloads already read)."""
        fetched = dict(fetched or {})
        found = list(found)
        unfetched = [e.task_id for e in found if e.state == FINISHED and e.task_id not in fetched]
        if unfetched:
            fetched.update(await self.jobs.payloads(unfetched))
        for event in found:
            if event.state == FINISHED and event.task_id not in fetched:
                continue  # its result is gone already: the sweep reports it
            await self._settle_state(event.job_state(fetched.get(event.task_id)))

    async def _sweep(self) -> None:
        states = await self.jobs.states(list(self._waiting))
        for state in states.values():
            await self._settle_state(state)

    async def _settle_state(self, state: JobState) -> None:
        answer = state.final_answer()
        if answer is not None:
            await self._finish(state.task_id, answer)
        elif state.status == STARTED and state.queue != SOFT:
            # Only hard jobs' starts are announced (as the worker does): a soft
            # job takes milliseconds, and a client of the old service expects its
            # success right after the acknowledgement.
            self._push_started(state.task_id)

    def _push_started(self, task_id: str) -> None:
        if task_id in self._started or task_id not in self._waiting:
            return
        self._started.add(task_id)
        for subscriber, refs in list(self._waiting[task_id].items()):
            if isinstance(subscriber, Hold):
                continue
            for ref in refs:
                if not subscriber.send(protocol.status(task_id, STARTED, ref)):
                    break  # gone: build no more frames for it

    async def _finish(self, task_id: str, answer: bytes | ProtocolError) -> None:
        waiters = self._waiting.pop(task_id, None)
        self._started.discard(task_id)
        if waiters:
            self._waits_removed.add(task_id)
            self._waits_added.discard(task_id)
        if not waiters:
            return
        for subscriber, refs in waiters.items():
            ids = self._by_subscriber.get(subscriber)
            if ids is not None:
                ids.discard(task_id)
                if not ids:
                    del self._by_subscriber[subscriber]
            self._end_tickets(task_id, subscriber)
            if isinstance(subscriber, Hold):
                continue  # the client fetches the answer with GET /api/tasks/<id>
            failed = isinstance(answer, ProtocolError)
            for ref in refs:
                # One frame per ref (each carries its ref). A success goes as the one
                # stored message and its ref: the copy with the ref is made as it
                # leaves (handlers/outbox.py), so many refs never hold many copies.
                sent = subscriber.send(protocol.error(answer, ref)) if failed else subscriber.send(answer, ref)
                await self._after_frame(sent)
                if not sent:
                    break
            delivered = getattr(subscriber, "delivered", None)
            if delivered is not None:  # metrics: the socket handler times its own requests
                delivered(task_id, answer.code.value if failed else "success")

    async def _after_frame(self, size: int) -> None:
        """Count a frame written (``size`` 0: not written); give the loop a turn after a slice of them."""
        self._slice_frames += 1
        self._slice_bytes += size
        if self._slice_frames >= WRITE_SLICE_FRAMES or self._slice_bytes >= WRITE_SLICE_BYTES:
            self._slice_frames = self._slice_bytes = 0
            await asyncio.sleep(0)
