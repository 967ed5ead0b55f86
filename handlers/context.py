"""What every handler of one server process shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from delivery import ResultDelivery
from metrics import Metrics
from settings import Settings
from tasks import TaskClient

T = TypeVar("T")


@dataclass
class ServiceContext:
    settings: Settings
    tasks: TaskClient
    delivery: ResultDelivery
    metrics: Metrics

    def run_blocking(self, fn: Callable[..., T], *args) -> Awaitable[T]:
        """Run a blocking call (Redis) on the task client's threads, never on the IOLoop."""
        return self.tasks._run(fn, *args)
