"""What every handler of one server process shares."""

from __future__ import annotations

from dataclasses import dataclass

from delivery import ResultDelivery
from metrics import Metrics
from settings import Settings
from tasks import TaskClient


@dataclass
class ServiceContext:
    settings: Settings
    tasks: TaskClient
    delivery: ResultDelivery
    metrics: Metrics
