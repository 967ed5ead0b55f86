"""The open WebSockets of one server process, and closing them for a restart.

On SIGTERM the server stops accepting, then each socket is closed with 1012
("service restart", RFC 6455 section 7.4.1 and the IANA registry) as soon as
every frame it received has been answered: a client never loses an
acknowledgement it was about to get, and reconnects (through the balancer,
to another server) to ask for the results it still waits for.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

SERVICE_RESTART = 1012
SERVICE_RESTART_TEXT = "service restart"


class Drainable(Protocol):
    def close_when_answered(self) -> None:
        """Close with 1012 once nothing the peer sent is still unanswered."""


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self._open: set[Drainable] = set()

    def opened(self, socket: Drainable) -> None:
        self._open.add(socket)
        if self.draining:  # accepted just before the listener closed
            socket.close_when_answered()

    def closed(self, socket: Drainable) -> None:
        self._open.discard(socket)

    @property
    def open_sockets(self) -> int:
        return len(self._open)

    async def close_all(self, timeout_s: float) -> int:
        """Close every socket once answered; wait up to ``timeout_s`` for them; return how many stay open."""
        self.draining = True
        for socket in list(self._open):
            socket.close_when_answered()
        deadline = time.monotonic() + timeout_s
        while self._open and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return len(self._open)
