"""Which queue a number's job goes to."""

from __future__ import annotations

from settings import Settings

SOFT = "soft"
HARD = "hard"
QUEUES = (SOFT, HARD)


def queue_for(number: int, settings: Settings) -> str:
    """Small numbers go to ``soft``, large ones to ``hard``."""
    return SOFT if number <= settings.soft_max_number else HARD


def timeout_for(queue: str, settings: Settings) -> int:
    """The queue's job time limit, in seconds."""
    return settings.soft_timeout_s if queue == SOFT else settings.hard_timeout_s
