"""What every handler of one server process shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from handlers.delivery import ResultDelivery
from handlers.drain import Drain
from handlers.identity import ClientIdentifier
from handlers.limits import ClientCounts
from handlers.metrics import Metrics
from handlers.outbox import ClientUnsent
from settings import Settings
from jobs.gateway import JobGateway

if TYPE_CHECKING:
    from handlers.front_door import HttpConnections


@dataclass
class ServiceContext:
    settings: Settings
    jobs: JobGateway
    delivery: ResultDelivery
    metrics: Metrics
    identifier: ClientIdentifier
    drain: Drain = field(default_factory=Drain)
    # This process's connections and requests in flight, per client (jobs/quota.py shares them).
    counts: ClientCounts = field(default_factory=lambda: ClientCounts(enabled=False))
    # Open HTTP connections counted per client; set by the server that reports their closing
    # (handlers/front_door.py), None (not counted) under any other.
    http_connections: "HttpConnections | None" = None
    # What each client's WebSockets in this process are owed together (CLIENT_MAX_UNSENT_BYTES_TOTAL).
    unsent: ClientUnsent | None = None

    def __post_init__(self) -> None:
        if self.unsent is None:
            self.unsent = ClientUnsent(self.settings.client_max_unsent_bytes_total)
