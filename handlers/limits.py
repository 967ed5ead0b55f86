"""Fair use: how much one connection may ask of the service, and what this process counts per client."""

from __future__ import annotations

import dataclasses
import time
import weakref
from typing import Callable, Protocol

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


class Member(Protocol):
    """A connection (or a client's HTTP requests) whose requests count for its client."""

    def in_flight(self) -> int:
        """Requests not answered yet, and jobs still awaited."""


class ClientCounts:
    """This server process's open connections and requests in flight, per client.

    Lives on the IOLoop. The job gateway writes these counts to Redis with each
    exchange (jobs/quota.py), so every server adds up the same totals. Counts
    are taken from the members when asked, never kept in step by hand, so
    they cannot drift.
    """

    def __init__(self, enabled: bool = True):
        # Off when no per-client limit is set: nothing is counted, nothing kept.
        self.enabled = enabled
        self._members: dict[str, dict[Member, bool]] = {}  # client -> {member: is a connection}
        self._client_of: dict[Member, str] = {}
        self._changed: set[str] = set()
        self._http: dict[str, Member] = {}  # client -> its HTTP requests, as one member

    def join(self, client: str, member: Member, connection: bool = True) -> None:
        if not self.enabled:
            return
        self._members.setdefault(client, {})[member] = connection
        self._client_of[member] = client
        self._changed.add(client)

    def leave(self, member: Member) -> None:
        """Stop counting ``member``; harmless if it was never counted or already left."""
        client = self._client_of.pop(member, None)
        if client is None:
            return
        if self._http.get(client) is member:
            del self._http[client]
        members = self._members[client]
        members.pop(member, None)
        if not members:
            del self._members[client]
        self._changed.add(client)

    def changed(self, client: str) -> None:
        """Note that ``client``'s count went down (an answer left), for the next exchange."""
        if client in self._members:
            self._changed.add(client)

    def http_member(self, client: str, make: Callable[[], Member]) -> Member | None:
        """The member that counts ``client``'s HTTP requests (made and joined if need be); None when off."""
        if not self.enabled:
            return None
        member = self._http.get(client)
        if member is None:
            member = self._http[client] = make()
            self.join(client, member, connection=False)
        return member

    def http_member_of(self, client: str) -> Member | None:
        """The member counting ``client``'s HTTP requests, if it has one now."""
        return self._http.get(client)

    @property
    def active(self) -> bool:
        """Whether Redis holds (or should hold) any count of this process's."""
        return bool(self._members or self._changed)

    def take(self, clients, everyone: bool = False) -> dict[str, tuple[int, int]]:
        """Counts of ``clients`` and of every client changed since the last take (or of ``everyone``)."""
        wanted = set(self._members) | self._changed if everyone else set(clients) | self._changed
        self._changed = set()
        counts = {}
        for client in wanted:
            members = self._members.get(client, {})
            counts[client] = (sum(members.values()), sum(m.in_flight() for m in members))
        return counts


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
