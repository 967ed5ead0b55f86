"""The server's gateway to Redis: the job store and the per-client limits, seen from the IOLoop.

Every Redis call the web server makes for its requests goes through here and
comes back as a Future. Requests that arrive while a round trip is under way
wait for it and then go together in the next one: under load a single round
trip enqueues hundreds of jobs, and one request alone still goes at once.
Redis is only touched on this module's own threads, never on the IOLoop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from collections import defaultdict
from typing import Awaitable, Callable, Container, Iterable, Protocol, TypeVar

from redis.exceptions import ResponseError

from jobs.outage import OUTAGE_ERRORS, OutageLog, out_of_memory  # noqa: F401 - out_of_memory is used here and re-exported
from jobs.janitor import Janitor
from jobs.quota import Admission, QuotaStore, Verdict, refusal
from jobs.states import FINISHED, Event, JobState
from jobs.store import ANONYMOUS, JobStore, Waits
from protocol import ErrorCode, ProtocolError, unknown_task

log = logging.getLogger(__name__)
T = TypeVar("T")

# Redis 6 reports a write its script made past ``maxmemory`` inside a script error.
class RedisFull(Exception):
    """Raised by the job gateway's calls in place of Redis's refusal of a write at its ``maxmemory``."""

# Background tasks, referenced until they end: the loop itself keeps only weak references.
_background: set[asyncio.Task] = set()


def spawn(coro, what: str) -> asyncio.Task:
    """Run ``coro`` in the background, keep it referenced, and log it if it fails."""
    task = asyncio.ensure_future(coro)
    _background.add(task)

    def ended(done: asyncio.Task) -> None:
        _background.discard(done)
        if not done.cancelled() and done.exception() is not None:
            log.error("%s failed", what, exc_info=done.exception())

    task.add_done_callback(ended)
    return task

# The dispatcher runs at least this often on each server, seconds, besides after every job event.
DISPATCH_INTERVAL_S = 0.1

# Resolve this many answers of one batch, then give the IOLoop a turn: 10,000
# requests that arrive together must not hold it for a second.
RESOLVE_SLICE = 200
# ... or answers carrying this many bytes of stored results (1000 cached
# copies of 100000! are 456 MB to write).
RESOLVE_SLICE_BYTES = 4 * 1024 * 1024


def unavailable() -> ProtocolError:
    return ProtocolError(ErrorCode.UNAVAILABLE, "the job queue cannot be reached right now; please retry later")


def redis_full() -> ProtocolError:
    """``busy``: Redis is reachable but at its memory limit, with only queued work left (nothing it may evict)."""
    return ProtocolError(ErrorCode.BUSY, "the job queue is full right now (its memory limit); please retry later")


class ClientCountsSource(Protocol):
    """This process's per-client counts (handlers/limits.py ClientCounts)."""

    active: bool

    def take(self, clients: Iterable[str], everyone: bool = False) -> dict[str, tuple[int, int]]: ...


class JobGateway:
    """Batches the requests (submits, lookups, connections) of every connection of this process
    into one Redis round trip per IOLoop pass, and runs the other Redis calls off the loop."""

    def __init__(self, store: JobStore, on_internal_error: Callable[[str], None] = lambda where: None,
                 quota: QuotaStore | None = None, counts: ClientCountsSource | None = None):
        self.store = store
        # Per-client limits shared with every server (None: no limits). Each
        # round trip below first writes ``counts`` and asks ``quota`` which
        # requests and connections may go ahead, in the same thread call.
        self.quota = quota
        self.counts = counts
        self._connections: list[tuple[str, asyncio.Future]] = []
        self._lease_due = False  # renew this server's lease on the counts (jobs/quota.py)
        self._lease_timer: asyncio.TimerHandle | None = None
        self._sync_everyone = True  # after a lapsed lease: write every client's count again
        self._closed = False
        # Told of every failure that is not an outage (metrics count them).
        self.on_internal_error = on_internal_error
        # Every call to Redis goes through ``_call``, which tells this log: an
        # outage is logged once per process, however many callers it fails.
        self.outage = OutageLog(log)
        # Writes Redis refuses at its maxmemory: logged once too, ended by a write that went through.
        self.memory = OutageLog(log, down="refuses writes at its maxmemory", up="takes writes again")
        # Two threads: one batch of requests and one fetch of results may be under
        # way at once. Event reads block in Redis, so they get a thread of their own.
        self._executor = ThreadPoolExecutor(2, thread_name_prefix="redis")
        self._events_executor = ThreadPoolExecutor(1, thread_name_prefix="redis-events")
        # Orphan recovery may wait on a paused Redis: never in the way of requests.
        self._janitor = Janitor(store.redis)
        self._janitor_executor = ThreadPoolExecutor(1, thread_name_prefix="redis-janitor")
        self._submits: list[tuple[int, asyncio.Future, str | None]] = []
        self._holds: set[tuple[int, str]] = set()
        self._lookups: list[tuple[str, asyncio.Future, str | None]] = []
        self._flushing = False
        self._dispatched_at = 0.0
        self._ends_read = False  # the last event read found some: dispatch with the next

    def close(self) -> None:
        """Drop work not started; wait for the round trips under way, so none lands later.

        Blocking (it may call Redis): call it off the IOLoop.
        """
        self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._events_executor.shutdown(wait=True, cancel_futures=True)
        self._janitor_executor.shutdown(wait=True, cancel_futures=True)
        if self.quota is not None:
            try:
                self.quota.retire()  # other servers need not wait for this one's lease to run out
            except OUTAGE_ERRORS:
                pass  # the lease runs out by itself

    # --- one client request each, answered as the protocol answers it --------
    # (The store's own calls take and answer many at once, errors as values.)

    def request_submit(self, number: int, client: str | None = None,
                       hold: bool = False) -> "asyncio.Future[JobState]":
        """The job for one ``number!``; fails with ``ProtocolError`` (busy, unavailable, rate_limited).

        Goes to Redis with every other request of this loop pass, in one
        ``JobStore.submit`` of many numbers. A request of a ``client`` counts
        against its per-client limits. ``hold``: the client (an HTTP POST's)
        holds a wait on the task until its own cancel or the result's expiry.
        """
        future = asyncio.get_running_loop().create_future()
        self._submits.append((number, future, client))
        if hold:
            self._holds.add((number, client or ANONYMOUS))
        self._schedule_flush()
        return future

    def request_lookup(self, task_id: str, client: str | None = None) -> "asyncio.Future[JobState]":
        """One task's state, batched as ``request_submit`` is (``JobStore.states``)."""
        future = asyncio.get_running_loop().create_future()
        self._lookups.append((task_id, future, client))
        self._schedule_flush()
        return future

    def admit_connection(self, client: str) -> "asyncio.Future[None]":
        """Count one more connection of ``client``; fails with ``rate_limited`` over its limit.

        Count the connection in ``counts`` before asking; if Redis cannot be
        reached the connection is let in, and counted once Redis answers again.
        """
        future = asyncio.get_running_loop().create_future()
        if self.quota is None or not self.quota.counts_connections:
            future.set_result(None)
            return future
        self._connections.append((client, future))
        self._schedule_flush()
        return future

    def _schedule_flush(self) -> None:
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(spawn, self._flush(), "Submitting requests")

    async def _flush(self) -> None:
        try:
            while self._submits or self._lookups or self._connections or self._lease_due:
                submits, self._submits = self._submits, []
                holds, self._holds = self._holds, set()
                lookups, self._lookups = self._lookups, []
                connections, self._connections = self._connections, []
                admissions, counts = self._admissions(submits, lookups, connections)
                try:
                    answers, states, verdicts, full = await self.run(
                        self._round_trip, counts, admissions,
                        [(n, c) for n, _, c in submits], [(t, c) for t, _, c in lookups], holds,
                    )
                except OUTAGE_ERRORS:  # logged by self.outage
                    for _, future, _ in submits + lookups:
                        _fail(future, unavailable())
                    for _, future in connections:
                        _fail(future, unavailable())
                    self._sync_everyone = self._sync_everyone or counts is not None
                    continue
                except Exception:  # noqa: BLE001 - a bug must not cost the requests their answers
                    log.exception("Submitting %d and looking up %d failed", len(submits), len(lookups))
                    self.on_internal_error("submit")
                    for _, future, _ in submits + lookups:
                        _fail(future, ProtocolError(ErrorCode.JOB_FAILED, "internal error; please retry"))
                    for _, future in connections:
                        _fail(future, unavailable())
                    continue
                if full is not None:
                    self.memory.failed(full)
                elif submits or admissions:
                    self.memory.succeeded()  # the submit or the limits' script wrote
                refused = self._refusals(verdicts)
                for client, future in connections:
                    _resolve(future, next(refused[(client, "connection")], None))
                resolved = [(f, next(refused[(c, "requests")], None) or answers[n]) for n, f, c in submits]
                resolved += [(f, next(refused[(c, "requests")], None) or states[t]) for t, f, c in lookups]
                count = size = 0
                for future, answer in resolved:
                    _resolve(future, answer)
                    count += 1
                    size += len(getattr(answer, "payload", None) or b"")
                    if count >= RESOLVE_SLICE or size >= RESOLVE_SLICE_BYTES:
                        # Each answer's callbacks (which write it out) run in the
                        # next loop pass: let them run a slice at a time, so other
                        # work gets turns.
                        count = size = 0
                        await asyncio.sleep(0)
                if counts is not None:
                    # Let the refused leave their connections' counts before
                    # the next batch takes them.
                    await asyncio.sleep(0)
        finally:
            self._flushing = False
            self._keep_lease()

    def _admissions(self, submits, lookups, connections):
        """What this batch asks of the per-client limits, and this server's counts to write first.

        (None, None) when no limit applies. The counts leave out the batch's
        own requests and connections, which the admissions add.
        """
        if self.quota is None or self.counts is None:
            return None, None
        lease_due, self._lease_due = self._lease_due, False
        asking: dict[str, list[int]] = {}  # client -> [connections, requests]
        for client, _ in connections:
            asking.setdefault(client, [0, 0])[0] += 1
        if self.quota.counts_requests:
            for _, _, client in submits + lookups:
                if client is not None:
                    asking.setdefault(client, [0, 0])[1] += 1
        everyone, self._sync_everyone = self._sync_everyone, False
        counts = self.counts.take(asking, everyone)
        for client, (conns, requests) in asking.items():
            held_conns, held_flight = counts.get(client, (0, 0))
            counts[client] = (max(held_conns - conns, 0), max(held_flight - requests, 0))
        admissions = [Admission(client, "connection", n[0]) for client, n in asking.items() if n[0]]
        admissions += [Admission(client, "requests", n[1]) for client, n in asking.items() if n[1]]
        if not (admissions or counts or lease_due):
            return None, None  # nothing to ask or to tell
        return admissions, counts

    def _round_trip(self, counts, admissions, submits, lookups, holds=frozenset()):
        """One thread call: the limits' verdicts, then the admitted requests' jobs and states.

        A Redis at its maxmemory (only queued work left, nothing to evict)
        refuses writes: every submit then gets ``busy`` and lookups, which only
        read, are still answered; the refusal is returned last (else None).
        """
        verdicts: dict[tuple[str, str], Verdict] = {}
        full = None
        if admissions is not None:
            try:
                lapsed, found = self.quota.exchange(counts, admissions)
            except ResponseError as exc:
                if not out_of_memory(exc):
                    raise
                # Nothing was counted: let everyone in, as in an outage, and
                # write every count again once Redis takes writes.
                full, lapsed, found = exc, False, []
                self._sync_everyone = True
            if lapsed:
                # Another server may have taken this one for dead and deleted
                # its counts: write them all again, at once.
                self._sync_everyone = self._lease_due = True
            verdicts = {(a.client, a.kind): v for a, v in zip(admissions, found)}
        room = {key: v.admitted for key, v in verdicts.items()}

        def admitted(client) -> bool:
            key = (client, "requests")
            if key not in room:
                return True
            room[key] -= 1
            return room[key] >= 0

        submitted = [(n, client or ANONYMOUS) for n, client in submits if admitted(client)]
        task_ids = [t for t, client in lookups if admitted(client)]
        if full is None:
            try:
                answers = self.store.submit([n for n, _ in submitted], [client for _, client in submitted],
                                            holds & set(submitted))
            except ResponseError as exc:
                if not out_of_memory(exc):
                    raise
                full = exc  # the script wrote nothing: Redis refuses its first write
        if full is not None:
            answers = {number: redis_full() for number, _ in submitted}
        return answers, self.store.states(task_ids), verdicts, full

    def _refusals(self, verdicts: dict[tuple[str, str], Verdict]):
        """For each (client, kind): an iterator giving None for each admitted one, then its refusal."""
        settings = self.quota.settings if self.quota else None

        def answers(verdict: Verdict):
            for _ in range(verdict.admitted):
                yield None
            while True:
                yield refusal(verdict.limit, settings)

        found = defaultdict(lambda: iter(()))
        found.update({key: answers(v) for key, v in verdicts.items()})
        return found

    def _keep_lease(self) -> None:
        """While this process counts anybody, renew its lease a few times per lease period."""
        if self.quota is None or self.counts is None or self._lease_timer is not None or self._closed:
            return
        if self.counts.active or self._lease_due:
            self._lease_timer = asyncio.get_running_loop().call_later(
                self.quota.settings.client_lease_s / 3, self._renew_lease)

    def _renew_lease(self) -> None:
        self._lease_timer = None
        if self._closed:
            return
        self._lease_due = True
        self._schedule_flush()

    # --- direct calls ---------------------------------------------------------

    def request_cancel(self, task_id: str, server_id: str, others_here: bool,
                       holder: str = "") -> "asyncio.Future[str]":
        """Cancel one task: ``stopped``, ``continues`` or ``ended``; fails with ``unknown_task_id``
        (where ``JobStore.cancel`` returns ``unknown``), ``busy`` or ``unavailable``. Not batched.
        ``holder``: an HTTP client's identity."""
        return asyncio.ensure_future(self._cancel(task_id, server_id, others_here, holder))

    async def _cancel(self, task_id: str, server_id: str, others_here: bool, holder: str = "") -> str:
        try:
            outcome = await self.run(self.store.cancel, task_id, server_id, others_here, holder)
        except OUTAGE_ERRORS:
            raise unavailable() from None
        except RedisFull:
            raise redis_full() from None
        if outcome == "unknown":
            raise unknown_task(task_id)
        return outcome

    def states(self, task_ids: list[str]) -> Awaitable[dict[str, JobState]]:
        return self.run(self.store.states, task_ids)

    def payloads(self, task_ids: list[str]) -> Awaitable[dict[str, bytes]]:
        return self.run(self.store.payloads, task_ids)

    def events_cursor(self) -> Awaitable[str]:
        return self.run(self.store.events_cursor)

    def sync_waits_and_read_events(
        self, cursor: str, block_ms: int, waiting: Container[str] = (), waits: tuple[str, Waits] | None = None,
    ) -> Awaitable[tuple[str, list[Event], dict[str, bytes]]]:
        """Share ``waits`` (server id, changes) and feed the RQ queues when due, then read the events after
        ``cursor``, in one round trip (JobStore.sync_waits_and_read_events); with the success messages of
        the finished jobs among ``waiting``.

        Small messages come with their events; the others are fetched on the
        same thread right after the read, so a job's end costs the IOLoop one
        wake-up.
        """
        return self._call(self._events_executor, self._sync_and_read_with_payloads, cursor, block_ms, waiting, waits)

    def _sync_and_read_with_payloads(self, cursor: str, block_ms: int, waiting: Container[str], waits=None):
        cursor, found = self.store.sync_waits_and_read_events(cursor, block_ms, waits=waits,
                                                              dispatch=self._dispatch_due())
        self._ends_read = bool(found)
        # ``waiting`` is read while the IOLoop may change it: a job missed here
        # is fetched by the caller, so a stale view costs a round trip, not a result.
        ended = [e for e in found if e.state == FINISHED and e.task_id in waiting]
        payloads = {e.task_id: e.payload for e in ended if e.payload}
        payloads.update(self.store.payloads([e.task_id for e in ended if not e.payload]))
        return cursor, found, payloads

    def recover_orphans(self) -> Awaitable[None]:
        """This process's turn at recovering jobs whose worker died (jobs/janitor.py); never fails."""
        return asyncio.get_running_loop().run_in_executor(self._janitor_executor, self._recover_orphans)

    def _recover_orphans(self) -> None:
        try:
            self._janitor.run_once()
            if self.store.settings.abandon_grace_s:
                self.store.stop_abandoned()
        except OUTAGE_ERRORS:
            pass  # the delivery loop reports outages
        except Exception as exc:  # noqa: BLE001 - a bug here must not stop deliveries
            if out_of_memory(exc):
                return  # a later round does the work, once Redis takes writes again
            log.exception("Orphan recovery failed")
            self.on_internal_error("janitor")

    def _dispatch_due(self) -> bool:
        """Whether to feed the RQ queues from the pending lists (fair scheduling) with the next event read.

        Job events mean jobs left the RQ queues, so they make room: dispatch
        with the read after one that found some. Otherwise every
        DISPATCH_INTERVAL_S, for ends without an event, new workers, and jobs
        another server left waiting when it stopped. Every server does this;
        the script is atomic, so they never collide.
        """
        now = time.monotonic()
        if self._ends_read or now - self._dispatched_at >= DISPATCH_INTERVAL_S:
            self._dispatched_at = now
            return True
        return False

    def run(self, fn: Callable[..., T], *args) -> Awaitable[T]:
        """Run a blocking call (Redis) on this gateway's threads, never on the IOLoop."""
        return self._call(self._executor, fn, *args)

    async def _call(self, executor: ThreadPoolExecutor, fn: Callable[..., T], *args) -> T:
        began = time.monotonic()
        try:
            result = await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except OUTAGE_ERRORS as exc:
            self.outage.failed(exc)
            raise
        except ResponseError as exc:
            if not out_of_memory(exc):
                raise
            self.memory.failed(exc)
            raise RedisFull(str(exc)) from exc
        self.outage.succeeded(began)
        return result


def _resolve(future: asyncio.Future, answer) -> None:
    if future.done():
        return
    if isinstance(answer, ProtocolError):
        future.set_exception(answer)
    else:
        future.set_result(answer)


def _fail(future: asyncio.Future, error: ProtocolError) -> None:
    if not future.done():
        future.set_exception(error)
