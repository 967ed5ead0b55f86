"""The server's Prometheus metrics, in a registry of its own per application."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.open_connections = Gauge(
            "factorial_open_connections", "WebSocket connections open now", registry=self.registry
        )
        self.requests = Counter(
            "factorial_jobs_accepted", "Factorial requests accepted, by queue and state at acceptance",
            ["queue", "status"], registry=self.registry,
        )

    def connection_opened(self) -> None:
        self.open_connections.inc()

    def connection_closed(self) -> None:
        self.open_connections.dec()

    def job_accepted(self, queue: str, status: str) -> None:
        self.requests.labels(queue or "unknown", status).inc()
