"""Starting new connections a few per loop pass, so a connection storm cannot hold the IOLoop,
and giving each one the header timeout from its accept to its first request head.

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
delay no one. TLS connections are served at once: Tornado's stream already
waits on their socket for the TLS handshake.

A connection is *opening* from its accept until its first request head has
arrived whole, and must do so within Tornado's header timeout
(``HEADER_TIMEOUT_S``), counted from the accept: Tornado's own clock starts
only when the connection is handed to it, so a client that trickled its
first bytes just before the timeout would otherwise get it twice.
``admit_opening`` and ``opening_ended`` are where a subclass bounds opening
connections (handlers/front_door.py: per client).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, SSLIOStream

# About 16 handshakes, a few milliseconds of loop time, per pass.
STARTS_PER_PASS = 16


class PacedHTTPServer(HTTPServer):
    def initialize(self, *args: Any, starts_per_pass: int = STARTS_PER_PASS, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.starts_per_pass = starts_per_pass
        self._opening: dict[IOStream, Any] = {}  # opening connection -> the timeout handle of its first head
        self._watched: dict[int, IOStream] = {}  # fd -> a connection that has sent nothing yet
        self._ready: deque[tuple[IOStream, Any]] = deque()
        self._starting = False

    # --- what a subclass may bound ------------------------------------------------

    def admit_opening(self, stream: IOStream, address: Any) -> bool:
        """Whether to take this new connection; one refused is the subclass's to answer and close."""
        return True

    def opening_ended(self, stream: IOStream) -> None:
        """``stream`` is no longer opening: its first head arrived, or it closed. Called once per admitted stream."""

    def request_delegate(self, server_conn: object, request_conn: httputil.HTTPConnection
                         ) -> httputil.HTTPMessageDelegate:
        """The delegate of one request (Tornado's ``start_request``), for a subclass to wrap."""
        return super().start_request(server_conn, request_conn)

    # --- Tornado's hooks ----------------------------------------------------------

    def handle_stream(self, stream: IOStream, address: Any) -> None:
        if not self.admit_opening(stream, address):
            return
        loop = IOLoop.current()
        self._opening[stream] = loop.call_later(self.conn_params.header_timeout or 3600, self._too_slow, stream)
        if isinstance(stream, SSLIOStream) or stream.socket is None:
            super().handle_stream(stream, address)
            return
        fd = stream.socket.fileno()
        self._watched[fd] = stream
        loop.add_handler(fd, lambda fd, events: self._has_spoken(fd, address), IOLoop.READ)

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection
                      ) -> httputil.HTTPMessageDelegate:
        stream = server_conn.stream
        return _FirstHead(self.request_delegate(server_conn, request_conn), lambda: self._end_opening(stream))

    def on_close(self, server_conn: object) -> None:
        super().on_close(server_conn)
        self._end_opening(server_conn.stream)

    @property
    def connections_not_started(self) -> int:
        """Connections accepted but not served yet: silent ones, and those queued to start."""
        return len(self._watched) + len(self._ready)

    @property
    def connections_opening(self) -> int:
        """Connections whose first request head has not arrived yet, started or not."""
        return len(self._opening)

    # --- the opening phase --------------------------------------------------------

    def _end_opening(self, stream: IOStream) -> None:
        timeout = self._opening.pop(stream, None)
        if timeout is not None:
            IOLoop.current().remove_timeout(timeout)
            self.opening_ended(stream)

    def _too_slow(self, stream: IOStream) -> None:
        """No whole request head within the header timeout of the accept: close it, started or not."""
        self._end_opening(stream)
        self._unwatch(stream)
        stream.close()  # a started one: Tornado's connection ends and calls on_close

    def _unwatch(self, stream: IOStream) -> None:
        if stream.socket is not None and self._watched.get(stream.socket.fileno()) is stream:
            fd = stream.socket.fileno()
            del self._watched[fd]
            IOLoop.current().remove_handler(fd)

    def _has_spoken(self, fd: int, address: Any) -> None:
        """Its first bytes (or its close) arrived: queue it to start."""
        stream = self._watched.pop(fd, None)
        if stream is None:
            return
        loop = IOLoop.current()
        loop.remove_handler(fd)
        self._ready.append((stream, address))
        if not self._starting:
            self._starting = True
            loop.add_callback(self._start_some)

    def _start_some(self) -> None:
        """Start up to ``starts_per_pass`` queued connections; the rest wait for the next pass."""
        for _ in range(min(self.starts_per_pass, len(self._ready))):
            stream, address = self._ready.popleft()
            if stream.closed():
                self._end_opening(stream)
            else:
                super().handle_stream(stream, address)
        if self._ready:
            IOLoop.current().add_callback(self._start_some)
        else:
            self._starting = False

    async def close_all_connections(self) -> None:
        """Close the connections not started (they have nothing owed), then Tornado's own."""
        for stream in list(self._watched.values()):
            self._end_opening(stream)
            self._unwatch(stream)
            stream.close()
        while self._ready:
            stream = self._ready.popleft()[0]
            self._end_opening(stream)
            stream.close()
        await super().close_all_connections()


class PassingDelegate(httputil.HTTPMessageDelegate):
    """A request delegate that passes everything on to ``delegate``: subclasses change what they need."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate):
        self.delegate = delegate

    def headers_received(self, start_line, headers: httputil.HTTPHeaders):
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes):
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()


class _FirstHead(PassingDelegate):
    """Passes a request on, and says when its head has arrived whole."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate, on_head: Callable[[], None]):
        super().__init__(delegate)
        self.on_head = on_head

    def headers_received(self, start_line, headers: httputil.HTTPHeaders):
        self.on_head()
        return self.delegate.headers_received(start_line, headers)
