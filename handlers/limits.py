"""Fair use: how much one connection may ask of the service."""

from __future__ import annotations

import time

from protocol import ErrorCode, ProtocolError
from settings import Settings


class RequestBudget:
    """A connection's allowance: requests in flight, and requests per second.

    The rate is a token bucket holding one second's worth of requests, so a
    client may send a burst of that size and then its steady rate.
    """

    def __init__(self, settings: Settings, clock=time.monotonic):
        self.max_in_flight = settings.max_in_flight
        self.rate = settings.max_requests_per_s
        self._clock = clock
        self._tokens = float(self.rate)
        self._updated = clock()

    def admit(self, in_flight: int) -> None:
        """Count one request, or raise ``rate_limited`` if it is over the allowance."""
        now = self._clock()
        self._tokens = min(float(self.rate), self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens < 1:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED, f"too many requests: at most {self.rate} per second on one connection"
            )
        if in_flight >= self.max_in_flight:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"too many requests in flight: at most {self.max_in_flight} unanswered on one connection",
            )
        self._tokens -= 1
