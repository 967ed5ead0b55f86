"""Accepting new connections a few at a time, so a connection storm cannot hold the IOLoop.

Tornado's accept handler takes up to 128 waiting connections each time the
listening socket is readable, and each of them sends its WebSocket handshake
at once: when 10,000 clients connect together, every loop pass then runs
hundreds of handshakes before anything else gets a turn. A ``PacedListener``
is the listening socket as Tornado's public ``add_sockets`` takes it (it only
calls ``fileno``, ``accept`` and ``close``), handing out at most ``per_pass``
connections per loop pass; the rest wait in the kernel's backlog, and the
socket, still readable, is served again in the next pass.
"""

from __future__ import annotations

import socket

from tornado.ioloop import IOLoop

# About 8 handshakes, a few milliseconds of work, per loop pass.
ACCEPTS_PER_PASS = 8


class PacedListener:
    def __init__(self, sock: socket.socket, per_pass: int = ACCEPTS_PER_PASS):
        self.socket = sock
        self.per_pass = per_pass
        self._taken = 0

    def fileno(self) -> int:
        return self.socket.fileno()

    def close(self) -> None:
        self.socket.close()

    def accept(self) -> tuple[socket.socket, object]:
        if self._taken >= self.per_pass:
            # Tornado's accept loop ends here, as when the backlog is empty.
            raise BlockingIOError("enough connections for this loop pass")
        connection = self.socket.accept()
        if self._taken == 0:
            # Runs in the next loop pass, after this one's accepts.
            IOLoop.current().add_callback(self._new_pass)
        self._taken += 1
        return connection

    def _new_pass(self) -> None:
        self._taken = 0
