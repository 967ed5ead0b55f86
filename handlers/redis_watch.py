"""Whether this server process reaches Redis, and what it does when it does not.

A thread of its own asks Redis ``PING`` every ``PROBE_INTERVAL_S`` on a
connection of its own, so the answer does not wait behind the job client's
round trips, nor on a busy IOLoop; every call of the job client that
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
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Protocol, TypeVar

from tornado.ioloop import PeriodicCallback

from jobs import connection
from jobs.client import unavailable
from jobs.outage import OutageLog
from settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

PROBE_INTERVAL_S = 0.25
# A PING slower than this counts as no answer.
PROBE_TIMEOUT_S = 0.5
# How often open WebSockets are checked against REDIS_LOST_CLOSE_S.
CHECK_INTERVAL_S = 0.25
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
        self.outage = outage  # the job client's: its calls that reach Redis count as answers
        self.clock = clock
        # When a PING that Redis answered was sent (self.clock). Written by the
        # probe thread only; a float is read and written whole.
        self._pinged = clock()
        self._sockets: dict[Closable, float] = {}  # open WebSocket -> when it opened
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
        """When Redis last answered: a PING of the probe, or a call of the job client (when it began)."""
        by_jobs = self.outage.last_reached if self.outage is not None else None
        return self._pinged if by_jobs is None else max(self._pinged, by_jobs)

    def silent_for(self) -> float:
        """Seconds since the last PING Redis answered was sent (about PROBE_INTERVAL_S when all is well)."""
        self._keep_probing()
        return max(self.clock() - self.last_reached, 0.0)

    # --- requests -----------------------------------------------------------------

    def bounded(self, answer: asyncio.Future, asked_at: float) -> asyncio.Future:
        """``answer``, or ``unavailable`` if Redis stays silent ``REDIS_UNAVAILABLE_S`` after ``asked_at``."""
        if answer.done():
            return answer
        budget = self.settings.redis_unavailable_s
        loop = asyncio.get_running_loop()
        bounded = loop.create_future()
        if self.silent_for() >= budget:
            bounded.set_exception(unavailable())
            answer.add_done_callback(_consume)
            return bounded
        timer = loop.call_later(max(asked_at + budget - self.clock(), 0), self._overdue, answer, bounded, asked_at)

        def settled(done: asyncio.Future) -> None:
            timer.cancel()
            _copy(done, bounded)

        answer.add_done_callback(settled)
        return bounded

    def _overdue(self, answer: asyncio.Future, bounded: asyncio.Future, asked_at: float) -> None:
        if bounded.done():
            return
        if self.last_reached >= asked_at:
            # Redis answers: the request is slow, not stranded. Look again later.
            asyncio.get_running_loop().call_later(self.settings.redis_unavailable_s, self._overdue, answer,
                                                  bounded, self.clock())
            return
        bounded.set_exception(unavailable())

    # --- WebSockets -------------------------------------------------------------

    def opened(self, socket: Closable) -> None:
        now = self.clock()
        lost_close_s = self.settings.redis_lost_close_s
        if now - self.last_reached >= lost_close_s:
            # Counted as open that long already, less REDIS_UNAVAILABLE_S (see the module's doc).
            now -= lost_close_s - min(self.settings.redis_unavailable_s, lost_close_s)
        self._sockets[socket] = now
        self._keep_probing()
        if self._checker is None:
            self._checker = PeriodicCallback(self._check_sockets, CHECK_INTERVAL_S * 1000)
            self._checker.start()

    def closed(self, socket: Closable) -> None:
        self._sockets.pop(socket, None)

    def _check_sockets(self) -> None:
        if not self._sockets:
            self._checker.stop()
            self._checker = None
            return
        self._keep_probing()
        now = self.clock()
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
                except Exception:  # noqa: BLE001 - any failure is "not reached"; the job client logs outages
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


def _copy(source: asyncio.Future, target: asyncio.Future) -> None:
    if target.done():
        _consume(source)
    elif source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())


def _consume(future: asyncio.Future) -> None:
    """Mark an answer no one will read as read, so asyncio does not log its exception."""
    if not future.cancelled():
        future.exception()

