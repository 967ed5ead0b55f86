"""The server's asynchronous view of the job store.

Requests that arrive while a round trip is under way wait for it and then go
together in the next one: under load a single round trip enqueues hundreds of
jobs, and one request alone still goes at once. Redis is only touched on this
module's own threads, never on the IOLoop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable, Container, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs.outage import OutageLog
from jobs.janitor import Janitor
from jobs.states import FINISHED, Event, JobState
from jobs.store import JobStore
from protocol import ErrorCode, ProtocolError

log = logging.getLogger(__name__)
T = TypeVar("T")

# Only these mean "Redis cannot be reached"; any other exception is a bug or a
# misconfiguration, and is logged with its traceback instead of passing for an outage.
OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError)

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

# Resolve this many answers of one batch, then give the IOLoop a turn: 10,000
# requests that arrive together must not hold it for a second.
RESOLVE_SLICE = 200
# ... or answers carrying this many bytes of stored results (1000 cached
# copies of 100000! are 456 MB to write).
RESOLVE_SLICE_BYTES = 4 * 1024 * 1024


def unavailable() -> ProtocolError:
    return ProtocolError(ErrorCode.UNAVAILABLE, "the job queue cannot be reached right now; please retry later")


class JobClient:
    def __init__(self, store: JobStore, on_internal_error: Callable[[str], None] = lambda where: None):
        self.store = store
        # Told of every failure that is not an outage (metrics count them).
        self.on_internal_error = on_internal_error
        # Every call to Redis goes through ``_call``, which tells this log: an
        # outage is logged once per process, however many callers it fails.
        self.outage = OutageLog(log)
        # Two threads: one batch of requests and one fetch of results may be under
        # way at once. Event reads block in Redis, so they get a thread of their own.
        self._executor = ThreadPoolExecutor(2, thread_name_prefix="redis")
        self._events_executor = ThreadPoolExecutor(1, thread_name_prefix="redis-events")
        # Orphan recovery may wait on a paused Redis: never in the way of requests.
        self._janitor = Janitor(store.redis)
        self._janitor_executor = ThreadPoolExecutor(1, thread_name_prefix="redis-janitor")
        self._submits: list[tuple[int, asyncio.Future]] = []
        self._lookups: list[tuple[str, asyncio.Future]] = []
        self._flushing = False

    def close(self) -> None:
        """Drop work not started; wait for the round trips under way, so none lands later."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._events_executor.shutdown(wait=True, cancel_futures=True)
        self._janitor_executor.shutdown(wait=True, cancel_futures=True)

    # --- batched requests ---------------------------------------------------

    def submit(self, number: int) -> "asyncio.Future[JobState]":
        """The job for ``number!``; fails with ``ProtocolError`` (busy, unavailable)."""
        future = asyncio.get_running_loop().create_future()
        self._submits.append((number, future))
        self._schedule_flush()
        return future

    def lookup(self, task_id: str) -> "asyncio.Future[JobState]":
        future = asyncio.get_running_loop().create_future()
        self._lookups.append((task_id, future))
        self._schedule_flush()
        return future

    def _schedule_flush(self) -> None:
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(spawn, self._flush(), "Submitting requests")

    async def _flush(self) -> None:
        try:
            while self._submits or self._lookups:
                submits, self._submits = self._submits, []
                lookups, self._lookups = self._lookups, []
                try:
                    answers, states = await self.run(
                        self._submit_and_lookup, [n for n, _ in submits], [t for t, _ in lookups]
                    )
                except OUTAGE_ERRORS:  # logged by self.outage
                    for _, future in submits + lookups:
                        _fail(future, unavailable())
                    continue
                except Exception:  # noqa: BLE001 - a bug must not cost the requests their answers
                    log.exception("Submitting %d and looking up %d failed", len(submits), len(lookups))
                    self.on_internal_error("submit")
                    for _, future in submits + lookups:
                        _fail(future, ProtocolError(ErrorCode.JOB_FAILED, "internal error; please retry"))
                    continue
                resolved = [(f, answers[n]) for n, f in submits] + [(f, states[t]) for t, f in lookups]
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
        finally:
            self._flushing = False

    def _submit_and_lookup(self, numbers: list[int], task_ids: list[str]):
        return self.store.submit(numbers), self.store.states(task_ids)

    # --- direct calls ---------------------------------------------------------

    def states(self, task_ids: list[str]) -> Awaitable[dict[str, JobState]]:
        return self.run(self.store.states, task_ids)

    def payloads(self, task_ids: list[str]) -> Awaitable[dict[str, bytes]]:
        return self.run(self.store.payloads, task_ids)

    def events_cursor(self) -> Awaitable[str]:
        return self.run(self.store.events_cursor)

    def read_events(
        self, cursor: str, block_ms: int, waiting: Container[str] = ()
    ) -> Awaitable[tuple[str, list[Event], dict[str, bytes]]]:
        """Events after ``cursor``, and the payloads of the finished jobs among ``waiting``.

        The payloads come from the same thread right after the read, so a job's
        end costs the IOLoop one wake-up instead of two.
        """
        return self._call(self._events_executor, self._read_events_and_payloads, cursor, block_ms, waiting)

    def _read_events_and_payloads(self, cursor: str, block_ms: int, waiting: Container[str]):
        cursor, found = self.store.read_events(cursor, block_ms)
        # ``waiting`` is read while the IOLoop may change it: a job missed here
        # is fetched by the caller, so a stale view costs a round trip, not a result.
        finished = [e.task_id for e in found if e.state == FINISHED and e.task_id in waiting]
        return cursor, found, self.store.payloads(finished)

    def recover_orphans(self) -> Awaitable[None]:
        """This process's turn at recovering jobs whose worker died (jobs/janitor.py); never fails."""
        return asyncio.get_running_loop().run_in_executor(self._janitor_executor, self._recover_orphans)

    def _recover_orphans(self) -> None:
        try:
            self._janitor.run_once()
        except OUTAGE_ERRORS:
            pass  # the delivery loop reports outages
        except Exception:  # noqa: BLE001 - a bug here must not stop deliveries
            log.exception("Orphan recovery failed")
            self.on_internal_error("janitor")

    def run(self, fn: Callable[..., T], *args) -> Awaitable[T]:
        """Run a blocking call (Redis) on this client's threads, never on the IOLoop."""
        return self._call(self._executor, fn, *args)

    async def _call(self, executor: ThreadPoolExecutor, fn: Callable[..., T], *args) -> T:
        began = time.monotonic()
        try:
            result = await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except OUTAGE_ERRORS as exc:
            self.outage.failed(exc)
            raise
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
