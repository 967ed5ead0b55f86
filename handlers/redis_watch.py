"""Whether this server process reaches Redis, and what it does when it does not.

A thread of its own asks Redis ``PING`` every ``PROBE_INTERVAL_S`` on a
connection of its own, so the answer does not wait behind the job gateway's
round trips, nor on a busy IOLoop; every call of the job gateway that
reaches Redis counts too (its ``OutageLog``), so a recovery is seen at the
first such call. From the time of the last answer:

- a request not answered ``REDIS_UNAVAILABLE_S`` after it arrived, with no
  answer from Redis since, gets ``unavailable`` (one that arrives while Redis
  has been silent that long gets it at once), instead of waiting for socket
  timeouts; a request that is merely slow, while Redis answers, still waits;
- a WebSocket that has been open for ``REDIS_LOST_CLOSE_S`` without Redis
  answering is closed with 1013 ("try again later") once its requests are
  answered: behind a balancer its client reconnects to a server that reaches
  Redis and asks for its jobs by ``task_id``. One that opens after that gets
  ``REDIS_UNAVAILABLE_S`` only: a balancer that has not yet taken this server
  out (leastconn sends the reconnecting clients to the server they just
  left, now the emptiest) must not hold them here for long, and a client
  with nowhere else to go still reconnects at most once a second;
- ``/healthz`` says at once that Redis is not reached (handlers/health.py).

The thread runs while the server has WebSockets open or is asked for its
health, and ends ``IDLE_STOP_S`` after the last of those.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Protocol, TypeVar

from tornado.ioloop import PeriodicCallback

from jobs import connection
from jobs.gateway import unavailable
from jobs.outage import OutageLog
from settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

PROBE_INTERVAL_S = 0.25
# A PING slower than this counts as no answer.
PROBE_TIMEOUT_S = 0.5
# How often waiting requests are checked against REDIS_UNAVAILABLE_S, and
# open WebSockets against REDIS_LOST_CLOSE_S.
CHECK_INTERVAL_S = 0.1
IDLE_STOP_S = 10.0
# RFC 6455 section 7.4.1 and the IANA registry: "Try Again Later".
TRY_AGAIN_LATER = 1013
TRY_AGAIN_LATER_TEXT = "try again later"


class Closable(Protocol):
    def close_when_answered(self, code: int, reason: str) -> None:
        """Close with ``code`` once nothing the peer sent is still unanswered."""


class RedisWatch:
    def __init__(self, settings: Settings, outage: OutageLog | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.outage = outage  # the job gateway's: its calls that reach Redis count as answers
        self.clock = clock
        # When a PING that Redis answered was sent (self.clock). Written by the
        # probe thread only; a float is read and written whole.
        self._pinged = clock()
        self._sockets: dict[Closable, float] = {}  # open WebSocket -> when it opened
        self._asked: deque[tuple[float, asyncio.Future]] = deque()  # requests not answered yet, in arrival order
        self._checker: PeriodicCallback | None = None
        self._probe: threading.Thread | None = None
        self._stop = threading.Event()
        self._wanted_until = 0.0
        self._health_reads = ThreadPoolExecutor(1, thread_name_prefix="redis-health")
        self._health_read: asyncio.Future | None = None
        # The last /healthz reading that reached Redis (handlers/health.py).
        self.last_health: dict | None = None

    # --- how long Redis has been silent ----------------------------------------

    @property
    def last_reached(self) -> float:
        """When Redis last answered: a PING of the probe, or a call of the job gateway (when it began)."""
        by_jobs = self.outage.last_reached if self.outage is not None else None
        return self._pinged if by_jobs is None else max(self._pinged, by_jobs)

    def silent_for(self) -> float:
        """Seconds since Redis last answered (a few hundredths while the job gateway is busy, at most about
        PROBE_INTERVAL_S when all is well)."""
        self._keep_probing()
        return max(self.clock() - self.last_reached, 0.0)

    # --- requests -----------------------------------------------------------------

    def bounded(self, answer: asyncio.Future, asked_at: float) -> asyncio.Future:
        """``answer``, failed with ``unavailable`` if Redis stays silent ``REDIS_UNAVAILABLE_S`` after ``asked_at``.

        The job gateway's futures are failed in place (it never resolves a
        future that is done): no timer and no second future per request, only
        an entry in a queue that the periodic check looks at. A task (a
        cancel) gets a future of its own, since a task cannot be failed.
        """
        if answer.done():
            return answer
        if isinstance(answer, asyncio.Task):
            answer = _mirror(answer)
        if self.silent_for() >= self.settings.redis_unavailable_s:
            answer.set_exception(unavailable())
            return answer
        self._asked.append((asked_at, answer))
        self._keep_checking()
        return answer

    def _fail_overdue(self, now: float) -> None:
        """Fail the requests that waited REDIS_UNAVAILABLE_S with no answer from Redis since they arrived."""
        asked = self._asked
        while asked and asked[0][1].done():
            asked.popleft()
        budget = self.settings.redis_unavailable_s
        last_reached = self.last_reached
        if not asked or now - last_reached < budget:
            return  # heard from Redis within the budget: no request can be overdue
        waiting = deque()
        for asked_at, answer in asked:
            if answer.done():
                continue
            if now - asked_at >= budget and last_reached < asked_at:
                answer.set_exception(unavailable())
            else:
                waiting.append((asked_at, answer))  # Redis answered since: slow, not stranded
        self._asked = waiting

    # --- WebSockets -------------------------------------------------------------

    def opened(self, socket: Closable) -> None:
        now = self.clock()
        lost_close_s = self.settings.redis_lost_close_s
        if now - self.last_reached >= lost_close_s:
            # Counted as open that long already, less REDIS_UNAVAILABLE_S (see the module's doc).
            now -= lost_close_s - min(self.settings.redis_unavailable_s, lost_close_s)
        self._sockets[socket] = now
        self._keep_probing()
        self._keep_checking()

    def closed(self, socket: Closable) -> None:
        self._sockets.pop(socket, None)

    def _keep_checking(self) -> None:
        if self._checker is None:
            self._checker = PeriodicCallback(self._check, CHECK_INTERVAL_S * 1000)
            self._checker.start()

    def _check(self) -> None:
        if not self._sockets and not self._asked:
            self._checker.stop()
            self._checker = None
            return
        self._keep_probing()
        now = self.clock()
        self._fail_overdue(now)
        limit = self.settings.redis_lost_close_s
        lost = [s for s, opened in self._sockets.items() if now - max(self.last_reached, opened) >= limit]
        if lost:
            log.warning("Redis not reached for %.1f s: closing %d WebSockets with %d so their clients go to "
                        "another server", now - self.last_reached, len(lost), TRY_AGAIN_LATER)
        for socket in lost:
            del self._sockets[socket]  # told once
            socket.close_when_answered(TRY_AGAIN_LATER, TRY_AGAIN_LATER_TEXT)

    # --- /healthz -----------------------------------------------------------------

    async def read(self, fn: Callable[..., T], *args, within_s: float) -> T:
        """``fn(*args)`` (blocking, Redis) on this watch's own thread; TimeoutError after ``within_s``.

        One read at a time: a caller while one is under way waits for that one,
        so reads stuck on a silent Redis never pile up.
        """
        self._keep_probing()
        if self._health_read is None or self._health_read.done():
            self._health_read = asyncio.get_running_loop().run_in_executor(self._health_reads, fn, *args)
        return await asyncio.wait_for(asyncio.shield(self._health_read), within_s)

    # --- the probe thread ---------------------------------------------------------

    def _keep_probing(self) -> None:
        self._wanted_until = self.clock() + IDLE_STOP_S
        if self._probe is None or not self._probe.is_alive():
            # Started afresh after being idle: Redis gets the benefit of the doubt until the first PING.
            self._pinged = self.clock()
            self._stop.clear()
            self._probe = threading.Thread(target=self._run_probe, name="redis-watch", daemon=True)
            self._probe.start()

    def _run_probe(self) -> None:
        redis = connection.connect(self.settings, socket_connect_timeout=PROBE_TIMEOUT_S,
                                   socket_timeout=PROBE_TIMEOUT_S)
        try:
            while not self._stop.is_set() and self.clock() < self._wanted_until:
                sent = self.clock()
                try:
                    redis.ping()
                    self._pinged = sent
                except Exception:  # noqa: BLE001 - any failure is "not reached"; the job gateway logs outages
                    pass
                self._stop.wait(max(PROBE_INTERVAL_S - (self.clock() - sent), 0.01))
        finally:
            redis.close()

    def stop(self) -> None:
        """Stop watching (on shutdown). Does not wait: the probe thread ends after its PING under way."""
        self._stop.set()
        if self._checker is not None:
            self._checker.stop()
            self._checker = None
        self._health_reads.shutdown(wait=False, cancel_futures=True)


def _mirror(task: asyncio.Task) -> asyncio.Future:
    """A future that ends as ``task`` does, unless it was failed first."""
    mirror = asyncio.get_running_loop().create_future()

    def copy(done: asyncio.Task) -> None:
        if mirror.done():
            if not done.cancelled():
                done.exception()  # read, so asyncio does not log it
        elif done.cancelled():
            mirror.cancel()
        elif done.exception() is not None:
            mirror.set_exception(done.exception())
        else:
            mirror.set_result(done.result())

    task.add_done_callback(copy)
    return mirror
