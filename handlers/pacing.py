"""Starting new connections a few per loop pass, so a connection storm cannot hold the IOLoop.

An event loop runs every callback that is ready when it polls, in one pass.
When thousands of clients connect together, their upgrade requests become
readable together, and Tornado would run thousands of handshakes (about
0.1-0.3 ms of loop time each) in one pass: with 10,000 connections opened at
once, a 0.4-0.7 s stall for every other connection (docs/performance.md).

``PacedHTTPServer`` is Tornado's ``HTTPServer`` with its public
``handle_stream`` overridden. A new plain connection is only watched until
its first bytes arrive (a cheap callback, no parsing); connections that have
something to say then queue, and at most ``STARTS_PER_PASS`` of them start
being served per loop pass, in arrival order. A connection that sends nothing
costs a watched socket, not a place in any queue, so slow or silent clients
delay no one; one still silent after Tornado's header timeout
(``HEADER_TIMEOUT_S``) is closed. TLS connections are served at once: Tornado's stream
already waits on their socket for the TLS handshake.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, SSLIOStream

# About 16 handshakes, a few milliseconds of loop time, per pass.
STARTS_PER_PASS = 16


class PacedHTTPServer(HTTPServer):
    def initialize(self, *args: Any, starts_per_pass: int = STARTS_PER_PASS, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.starts_per_pass = starts_per_pass
        self._watched: dict[int, tuple[IOStream, Any, Any]] = {}  # fd -> (stream, address, timeout handle)
        self._ready: deque[tuple[IOStream, Any]] = deque()
        self._starting = False

    def handle_stream(self, stream: IOStream, address: Any) -> None:
        if isinstance(stream, SSLIOStream) or stream.socket is None:
            super().handle_stream(stream, address)
            return
        loop = IOLoop.current()
        fd = stream.socket.fileno()
        timeout = loop.call_later(self.conn_params.header_timeout or 3600, self._silent_too_long, fd)
        self._watched[fd] = (stream, address, timeout)
        loop.add_handler(fd, lambda fd, events: self._has_spoken(fd), IOLoop.READ)

    @property
    def connections_not_started(self) -> int:
        """Connections accepted but not served yet: silent ones, and those queued to start."""
        return len(self._watched) + len(self._ready)

    def _silent_too_long(self, fd: int) -> None:
        """Nothing arrived within the header timeout: close it (handing it over would start Tornado's anew)."""
        watched = self._watched.pop(fd, None)
        if watched is not None:
            IOLoop.current().remove_handler(fd)
            watched[0].close()

    def _has_spoken(self, fd: int) -> None:
        """Its first bytes (or its close) arrived: queue it to start."""
        watched = self._watched.pop(fd, None)
        if watched is None:
            return
        stream, address, timeout = watched
        loop = IOLoop.current()
        loop.remove_handler(fd)
        loop.remove_timeout(timeout)
        self._ready.append((stream, address))
        if not self._starting:
            self._starting = True
            loop.add_callback(self._start_some)

    def _start_some(self) -> None:
        """Start up to ``starts_per_pass`` queued connections; the rest wait for the next pass."""
        for _ in range(min(self.starts_per_pass, len(self._ready))):
            stream, address = self._ready.popleft()
            if not stream.closed():
                super().handle_stream(stream, address)
        if self._ready:
            IOLoop.current().add_callback(self._start_some)
        else:
            self._starting = False

    async def close_all_connections(self) -> None:
        """Close the connections not started (they have nothing owed), then Tornado's own."""
        loop = IOLoop.current()
        for fd, (stream, _, timeout) in list(self._watched.items()):
            loop.remove_handler(fd)
            loop.remove_timeout(timeout)
            stream.close()
        self._watched.clear()
        while self._ready:
            self._ready.popleft()[0].close()
        await super().close_all_connections()
