"""Fair use: how much one connection may ask of the service, and what this process counts per client."""

from __future__ import annotations

import dataclasses
import time
import weakref
from typing import Hashable, Protocol

from handlers.in_flight import InFlight
from jobs.gateway import JobGateway, RedisFull
from jobs.outage import OUTAGE_ERRORS
from jobs.quota import Admission, QuotaStore, refusal
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


class Member(Hashable, Protocol):
    """An open connection of a client (a WebSocket, or an HTTP connection: handlers/front_door.py)."""


class ClientCounts:
    """This server process's open connections and requests in flight, per client.

    Lives on the IOLoop. The job gateway writes these counts to Redis with each
    exchange (jobs/quota.py), so every server adds up the same totals.
    Connections are counted from the members when asked; requests in flight
    by ``in_flight`` (handlers/in_flight.py), which notes every change. Neither
    is kept in step by hand, so they cannot drift.
    """

    def __init__(self, enabled: bool = True):
        # Off when no per-client limit is set: nothing is written, no connection kept.
        self.enabled = enabled
        self._members: dict[str, set[Member]] = {}  # client -> its open connections
        self._client_of: dict[Member, str] = {}
        self._changed: set[str] = set()
        # Counted even when off: MAX_IN_FLIGHT bounds each connection's.
        self.in_flight = InFlight(on_change=self.changed)

    def join(self, client: str, member: Member) -> None:
        if not self.enabled:
            return
        self._members.setdefault(client, set()).add(member)
        self._client_of[member] = client
        self._changed.add(client)

    def leave(self, member: Member) -> None:
        """Stop counting ``member``; harmless if it was never counted or already left."""
        client = self._client_of.pop(member, None)
        if client is None:
            return
        members = self._members[client]
        members.discard(member)
        if not members:
            del self._members[client]
        self._changed.add(client)

    def changed(self, client: str) -> None:
        """Note that ``client``'s count changed, for the next exchange."""
        if self.enabled:
            self._changed.add(client)

    @property
    def active(self) -> bool:
        """Whether Redis holds (or should hold) any count of this process's."""
        return self.enabled and bool(self._members or self._changed or self.in_flight.any())

    def take(self, clients, everyone: bool = False) -> dict[str, tuple[int, int]]:
        """Counts of ``clients`` and of every client changed since the last take (or of ``everyone``)."""
        if not self.enabled:
            return {}
        wanted = set(self._members) | self.in_flight.clients() if everyone else set(clients)
        wanted |= self._changed
        self._changed = set()
        return {client: (len(self._members.get(client, ())), self.in_flight.of_client(client)) for client in wanted}


class RequestRate:
    """Counts requests that start no job (HTTP cancels, ``/healthz``, ``/metrics``) against their client's rate.

    Factorial requests and lookups are counted by the job gateway, in their own
    round trip (jobs/quota.py). These ask Redis on their own, for the rate
    only: a client at its in-flight limit can still cancel, and a request that
    enqueues nothing holds no place in flight. They count under a name of
    their own, so they never write this server's counts or renew its lease.
    """

    def __init__(self, jobs: JobGateway):
        self._jobs = jobs
        self._quota: QuotaStore | None = None
        quota = jobs.quota
        if quota is not None and quota.settings.client_max_requests_per_s:
            rate_only = dataclasses.replace(quota.settings, client_max_connections=0, client_max_in_flight=0)
            self._quota = QuotaStore(quota.redis, rate_only, f"{quota.server_id}:rate")

    @classmethod
    def of(cls, jobs: JobGateway) -> "RequestRate":
        """The one ``RequestRate`` of this job gateway (made on first use)."""
        rate = _rates.get(jobs)
        if rate is None:
            rate = _rates[jobs] = cls(jobs)
        return rate

    async def admit(self, client: str) -> None:
        """Count one request of ``client``; raise ``rate_limited`` over its rate.

        When Redis cannot say (unreachable, or full: no write to count with),
        the request goes ahead: it meets the outage itself and answers
        accordingly (``/healthz`` must answer then most of all).
        """
        if self._quota is None:
            return
        try:
            _, (verdict,) = await self._jobs.run(self._quota.exchange, {}, [Admission(client, "requests", 1)])
        except (*OUTAGE_ERRORS, RedisFull):
            return
        if not verdict.admitted:
            raise refusal(verdict.limit, self._quota.settings)


# One RequestRate per job gateway, that is per application, dropped with it.
_rates: "weakref.WeakKeyDictionary[JobGateway, RequestRate]" = weakref.WeakKeyDictionary()
