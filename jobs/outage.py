"""Logging a Redis outage without flooding the log.

Every call that fails during an outage would otherwise log a line: the
delivery loop alone retries twice a second. ``OutageLog`` logs the outage once
when it starts, again at doubling intervals (capped) while it lasts, with the
count of failed calls, and once when it ends. The same log serves other
lasting refusals, such as a Redis at its ``maxmemory`` refusing writes
(``down`` and ``up`` name the state and its end).

It also says which exceptions mean an outage, for the server and the workers
alike (the workers import nothing of the server).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class NotReplicated(Exception):
    """Fewer replicas than REDIS_MIN_REPLICAS confirmed a submit's writes in time (jobs/store.py)."""


# Only these mean "Redis cannot be reached"; any other exception is a bug or a
# misconfiguration, and is logged with its traceback instead of passing for an outage.
OUTAGE_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    # Writes the primary took but too few replicas confirmed: a primary lost now
    # could undo them, so the client hears ``unavailable`` as in an outage.
    NotReplicated,
)

# The first reminder comes this long after the start of an outage; each next
# one twice as long after the previous, at most MAX_REPEAT_S.
FIRST_REPEAT_S = 1.0
MAX_REPEAT_S = 60.0


_OOM_TEXT = "OOM command not allowed"


def out_of_memory(exc: BaseException) -> bool:
    """Whether Redis refused a write for its ``maxmemory``: nothing it may evict was left (stack/redis.py).

    Redis answers such a write with an ``OOM`` error (redis-py's
    OutOfMemoryError); Redis 6 wraps one met by a script in a plain script error.
    """
    return isinstance(exc, OutOfMemoryError) or (isinstance(exc, ResponseError) and _OOM_TEXT in str(exc))


class OutageLog:
    def __init__(self, log: logging.Logger, what: str = "Redis", first_repeat_s: float = FIRST_REPEAT_S,
                 max_repeat_s: float = MAX_REPEAT_S, clock: Callable[[], float] = time.monotonic,
                 down: str = "unreachable", up: str = "reachable again"):
        self.log = log
        self.what = what
        self.down_text = down
        self.up_text = up
        self.first_repeat_s = first_repeat_s
        self.max_repeat_s = max_repeat_s
        self.clock = clock
        self.down = False
        self._began = self._last_failure = self._next_log = 0.0
        self._repeat_s = first_repeat_s
        self._failures = 0
        # When the latest call that reached Redis began (this log's clock), or
        # None: handlers/redis_watch.py counts it as an answer from Redis.
        self.last_reached: float | None = None

    def failed(self, exc: BaseException) -> None:
        """A call could not reach Redis (or met the refusal this log is about)."""
        now = self.clock()
        self._last_failure = now
        self._failures += 1
        if not self.down:
            self.down = True
            self._began = now
            self._failures = 1
            self._repeat_s = self.first_repeat_s
            self._next_log = now + self._repeat_s
            self.log.warning("%s %s: %s", self.what, self.down_text, exc)
        elif now >= self._next_log:
            self.log.warning("%s still %s after %.0f s (calls failed: %d): %s",
                             self.what, self.down_text, now - self._began, self._failures, exc)
            self._repeat_s = min(2 * self._repeat_s, self.max_repeat_s)
            self._next_log = now + self._repeat_s

    def succeeded(self, began: float | None = None) -> None:
        """A call that began at ``began`` (this log's clock) reached Redis.

        A call that began before the latest failure proves nothing about now:
        it does not end the outage.
        """
        reached = self.clock() if began is None else began
        if self.last_reached is None or reached > self.last_reached:
            self.last_reached = reached
        if not self.down or (began is not None and began < self._last_failure):
            return
        self.down = False
        self.log.warning("%s %s after %.1f s (calls failed: %d)",
                         self.what, self.up_text, self.clock() - self._began, self._failures)
