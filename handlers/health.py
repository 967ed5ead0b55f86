"""``GET /healthz`` and ``GET /metrics``: is the service able to work, and how it is doing."""

from __future__ import annotations

import asyncio
import json
import logging

from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from rq import Worker

import protocol
from handlers.context import ServiceContext
from handlers.errors import JsonRequestHandler
from handlers.redis_watch import RedisWatch
from handlers.identity import client_of
from handlers.limits import RequestRate
from jobs.outage import OUTAGE_ERRORS
from jobs.store import JobStore
from protocol import ProtocolError

log = logging.getLogger(__name__)

# /healthz answers within this whatever Redis does: HAProxy's check gives up after 1 s (deploy/haproxy.cfg).
HEALTH_BUDGET_S = 0.8


def read_health(store: JobStore) -> dict:
    """Redis reachability, and the workers and length of each queue. Blocking."""
    try:
        store.redis.ping()
        lengths = store.jobs_waiting()
        queues = {
            name: {"workers": Worker.count(connection=store.redis, queue=queue), "length": lengths[name]}
            for name, queue in store.queues.items()
        }
    except OUTAGE_ERRORS:
        # Not the exception's text: it names Redis's address, which /healthz,
        # open to any load balancer or passer-by, has no need to tell.
        return {"redis": False, "error": "Redis cannot be reached", "queues": {}}
    except RedisError as exc:
        log.warning("Health check: Redis answered with an error: %s", exc)
        return {"redis": False, "error": "Redis answered with an error (see the server log)", "queues": {}}
    return {"redis": True, "queues": queues}


def read_queue_lengths(store: JobStore) -> dict[str, int]:
    """Jobs waiting for each queue (its RQ queue and the clients' pending lists), in one round trip. Blocking."""
    return store.jobs_waiting()


class _CountedPage(JsonRequestHandler):
    """A page whose every request counts against its client's request rate: each one costs Redis round trips."""

    def initialize(self, context: ServiceContext) -> None:
        self.context = context

    async def prepare(self) -> None:
        try:
            await RequestRate.of(self.context.jobs).admit(self._client())
        except ProtocolError as err:
            self.set_status(429)
            self.set_header("Content-Type", "application/json")
            self.set_header("Retry-After", "1")  # seconds: the rate's bucket refills within one
            self.finish(protocol.error(err))

    def _client(self) -> str:
        """The client fair share counts this request under; a probe needs no API key, so without one, its address."""
        identifier = self.context.identifier
        try:
            return identifier.identify(self.request).client
        except ProtocolError:
            return client_of(identifier.address(self.request.remote_ip or "", self.request.headers),
                             identifier.ipv6_prefix)


class HealthHandler(_CountedPage):
    """200 when Redis answers and every queue has a worker, else 503: a load balancer's probe."""

    def initialize(self, context: ServiceContext, watch: RedisWatch) -> None:
        super().initialize(context)
        self.watch = watch

    async def prepare(self) -> None:
        # The rate count asks Redis through the job gateway's threads: skipped
        # while Redis is silent, and given up on after half the budget, so a
        # balancer's check never waits for a socket timeout.
        if self.watch.silent_for() < self.context.settings.redis_unavailable_s:
            try:
                await asyncio.wait_for(super().prepare(), HEALTH_BUDGET_S / 2)
            except asyncio.TimeoutError:
                pass  # not counted, as in an outage

    async def get(self) -> None:
        health = await self._read()
        healthy = health["redis"] and all(q["workers"] >= 1 for q in health["queues"].values())
        health["ok"] = bool(healthy)
        self.set_status(200 if healthy else 503)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-cache")
        self.finish(json.dumps(health))

    async def _read(self) -> dict:
        """Redis and the queues, on the watch's own thread, never longer than HEALTH_BUDGET_S.

        Redis counts as reached while the watch heard from it within
        REDIS_UNAVAILABLE_S, as for requests: one failed read does not make a
        balancer take the server out (the queues are then the last ones read).
        A Redis failover (about 2.5 s) thus fails fewer checks than HAProxy's
        "fall" (deploy/haproxy.cfg), and cuts no session.
        """
        budget_s = self.context.settings.redis_unavailable_s
        silent_s = self.watch.silent_for()
        if silent_s >= budget_s:
            return {"redis": False, "error": f"Redis has not answered for {silent_s:.1f} s", "queues": {}}
        try:
            # What is left of the budget after prepare().
            within_s = max(HEALTH_BUDGET_S - self.request.request_time(), 0.1)
            health = await self.watch.read(read_health, self.context.jobs.store, within_s=within_s)
        except asyncio.TimeoutError:
            health = {"redis": False, "error": f"Redis did not answer within {HEALTH_BUDGET_S} s", "queues": {}}
        if health["redis"]:
            self.watch.last_health = health
        elif self.watch.last_health is not None and self.watch.silent_for() < budget_s:
            health = {**self.watch.last_health, "stale": True}
        return health


class MetricsHandler(_CountedPage):
    """Prometheus text format; queue lengths are left out when Redis cannot be reached."""

    async def get(self) -> None:
        try:
            lengths = await self.context.jobs.run(read_queue_lengths, self.context.jobs.store)
        except RedisError as exc:
            if not isinstance(exc, OUTAGE_ERRORS):  # an outage is logged once, by the job gateway
                log.warning("Metrics without queue lengths: %s", exc)
            lengths = {}
        body = self.context.metrics.exposition(self.context.delivery.waiting_jobs, lengths)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(body)
