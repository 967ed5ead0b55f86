"""The server's Prometheus metrics, in a registry of its own per application.

The registry is the application's own (tests run several applications in one
process), so the standard process, platform and garbage-collector metrics
that prometheus_client puts in its global registry are registered here too.

Counters move as things happen, on the IOLoop, and cost a dict lookup. Values
that live in Redis (queue lengths) are read at scrape time by the ``/metrics``
handler, off the loop, and set here just before the text is generated.
"""

from __future__ import annotations

from prometheus_client import (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter,
                               Gauge, Histogram, generate_latest)

# From a factorial request's arrival to its answer leaving: soft jobs take
# milliseconds, 1,000,000! takes several seconds, the hard time limit is 60 s.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # process_* (CPU, resident memory, open fds, start time), python_info, python_gc_*.
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(standard)
        self.open_connections = Gauge(
            "factorial_open_connections", "WebSocket connections open now", registry=self.registry
        )
        self.requests = Counter(
            "factorial_jobs_accepted", "Factorial requests accepted, by queue and state at acceptance",
            ["queue", "status"], registry=self.registry,
        )
        self.closed_unread = Counter(
            "factorial_connections_closed_unread",
            "WebSocket connections closed with 1008 because their unsent bytes passed CLIENT_MAX_UNSENT_BYTES",
            registry=self.registry,
        )
        self.refused_opening = Counter(
            "factorial_connections_refused_opening",
            "Connections refused at accept: their address held CLIENT_MAX_OPENING_CONNECTIONS that had sent no request",
            registry=self.registry,
        )
        self.delivered = Counter(
            "factorial_results_delivered", "Final answers sent (success, or the error code), pushed or at once",
            ["outcome"], registry=self.registry,
        )
        self.latency = Histogram(
            "factorial_request_latency_seconds", "From a factorial request's arrival to its final answer leaving",
            buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )
        self.waiting_jobs = Gauge(
            "factorial_waiting_jobs", "Jobs that connections of this process wait for", registry=self.registry
        )
        self.internal_errors = Counter(
            "factorial_internal_errors", "Failures that were not Redis outages (bugs, misconfiguration), by place",
            ["where"], registry=self.registry,
        )
        self.queue_length = Gauge(
            "factorial_queue_length", "Jobs waiting in each queue, read at scrape time",
            ["queue"], registry=self.registry,
        )

        # Labelled children, looked up once (``labels()`` costs microseconds per call, twice per request).
        self._accepted: dict[tuple[str, str], Counter] = {}
        self._delivered: dict[str, Counter] = {}

    def connection_opened(self) -> None:
        self.open_connections.inc()

    def connection_closed(self) -> None:
        self.open_connections.dec()

    def connection_closed_unread(self) -> None:
        self.closed_unread.inc()

    def connection_refused_opening(self) -> None:
        self.refused_opening.inc()

    def job_accepted(self, queue: str, status: str) -> None:
        key = (queue or "unknown", status)
        counter = self._accepted.get(key)
        if counter is None:
            counter = self._accepted[key] = self.requests.labels(*key)
        counter.inc()

    def internal_error(self, where: str) -> None:
        self.internal_errors.labels(where).inc()

    def result_delivered(self, outcome: str, latency_s: float | None = None) -> None:
        """One final answer left; ``latency_s`` when its request's arrival is known."""
        counter = self._delivered.get(outcome)
        if counter is None:
            counter = self._delivered[outcome] = self.delivered.labels(outcome)
        counter.inc()
        if latency_s is not None:
            self.latency.observe(latency_s)

    def exposition(self, waiting_jobs: int, queue_lengths: dict[str, int]) -> bytes:
        """The Prometheus text, with the values read at scrape time."""
        self.waiting_jobs.set(waiting_jobs)
        for name, length in queue_lengths.items():
            self.queue_length.labels(name).set(length)
        return generate_latest(self.registry)
