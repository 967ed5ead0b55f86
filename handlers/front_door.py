"""The service's HTTP server: Tornado's, paced (handlers/pacing.py), with its edges hardened.

- **Bodies.** No request body over ``MAX_FRAME_BYTES`` is read, on any route.
  One whose ``Content-Length`` says it is larger is answered 413 (the
  protocol's ``too_large`` error) from its headers, before a byte of it is
  read; a chunked one is cut off by Tornado at the limit (400). A body must
  arrive within ``BODY_TIMEOUT_S``.
- **Headers.** A request's headers must arrive within ``HEADER_TIMEOUT_S``;
  Tornado's ``idle_connection_timeout`` is the same clock, so an idle
  keep-alive connection closes after it too. A connection that sends nothing
  at all is closed by the pacing after the same time.
- **Counting.** An HTTP connection is one of its client's connections
  (``CLIENT_MAX_CONNECTIONS``, with its WebSockets) from its first API request
  until it closes (``HttpConnections``). Before its first request head has
  arrived, nothing says who the client is but the peer's address: each
  address (an IPv6 /64 by ``CLIENT_IPV6_PREFIX``) may hold at most
  ``CLIENT_MAX_OPENING_CONNECTIONS`` such connections, so silent or trickling
  sockets from one host cannot take the process's descriptors
  (``OpeningConnections``). A trusted proxy's address is not bounded here:
  it carries many clients, and bounds its own connections.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from tornado import gen, httputil
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError

import protocol
from handlers.identity import ClientIdentifier, client_of
from handlers.limits import ClientCounts
from handlers.pacing import PacedHTTPServer, PassingDelegate
from protocol import ErrorCode, ProtocolError
from settings import Settings

access_log = logging.getLogger("tornado.access")

_OPENING_BODY = protocol.error(ProtocolError(
    ErrorCode.RATE_LIMITED, "too many connections from your address have not sent a request yet")).encode()
_OPENING_REFUSAL = (
    "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
    f"Retry-After: 1\r\nConnection: close\r\nContent-Length: {len(_OPENING_BODY)}\r\n\r\n"
).encode() + _OPENING_BODY

# After a 413, what the client still sends is read and dropped for this long
# (at most this much): closing a socket with unread bytes resets it, and a
# reset can reach the client before it has read the answer.
LINGER_S = 1.0
LINGER_BYTES = 4 * 1024 * 1024
_READ_CHUNK = 64 * 1024


class FrontDoorServer(PacedHTTPServer):
    """``PacedHTTPServer`` with the limits above, for ``app`` (whose ``context`` counts the connections)."""

    def initialize(self, app, settings: Settings, **kwargs: Any) -> None:
        self.opening = OpeningConnections(settings.client_max_opening_connections, app.context.identifier)
        self.metrics = app.context.metrics
        super().initialize(
            app,
            idle_connection_timeout=settings.header_timeout_s,
            body_timeout=settings.body_timeout_s,
            max_body_size=settings.max_frame_bytes,
            **kwargs,
        )
        self.max_body_bytes = settings.max_frame_bytes
        context = app.context
        # Only a server that reports closed connections (on_close below) may count them.
        self.connections = context.http_connections = HttpConnections(context.counts, context.jobs)

    def admit_opening(self, stream: IOStream, address: Any) -> bool:
        if self.opening.admit(stream, address[0] if isinstance(address, tuple) and address else ""):
            return True
        self.metrics.connection_refused_opening()
        _refuse_at_once(stream)
        return False

    def opening_ended(self, stream: IOStream) -> None:
        self.opening.ended(stream)

    def request_delegate(self, server_conn: object, request_conn: httputil.HTTPConnection
                         ) -> httputil.HTTPMessageDelegate:
        return _BodyLimit(super().request_delegate(server_conn, request_conn), request_conn, self.max_body_bytes)

    def on_close(self, server_conn: object) -> None:
        super().on_close(server_conn)
        self.connections.closed(server_conn.stream)


class OpeningConnections:
    """Per peer address, the connections whose first request head has not arrived; at most ``limit`` each."""

    def __init__(self, limit: int, identifier: ClientIdentifier):
        self.limit = limit
        self.identifier = identifier
        self._peer_of: dict[IOStream, str] = {}
        self._count: dict[str, int] = {}

    def admit(self, stream: IOStream, peer: str) -> bool:
        if not self.limit or self.identifier.trusted(peer):
            return True
        client = client_of(peer, self.identifier.ipv6_prefix)
        held = self._count.get(client, 0)
        if held >= self.limit:
            return False
        self._count[client] = held + 1
        self._peer_of[stream] = client
        return True

    def ended(self, stream: IOStream) -> None:
        client = self._peer_of.pop(stream, None)
        if client is None:
            return
        held = self._count[client] - 1
        if held:
            self._count[client] = held
        else:
            del self._count[client]


def _refuse_at_once(stream: IOStream) -> None:
    """Answer 429 if the socket takes it now, and close: a refused connection holds nothing, not even a wait."""
    if stream.socket is not None and not isinstance(stream, SSLIOStream):
        try:
            stream.socket.send(_OPENING_REFUSAL)
        except OSError:
            pass  # gone or full: the close alone says it
    stream.close()


class HttpConnection:
    """One open HTTP connection, as a member of its client (handlers/limits.py)."""

    def __init__(self, client: str):
        self.client = client  # its requests count in flight on their own (handlers/in_flight.py)


class HttpConnections:
    """This process's HTTP connections, each counted as a connection of the client of its latest API request.

    Latest, not first: a proxy's keep-alive connection carries the requests
    of one client after another.
    """

    def __init__(self, counts: ClientCounts, jobs):
        self.counts = counts
        self.jobs = jobs
        self._members: dict[IOStream, HttpConnection] = {}

    async def admit(self, stream: IOStream, client: str) -> None:
        """Count ``stream`` for ``client``; raises ``rate_limited`` when that is one connection too many."""
        if not self.counts.enabled:
            return
        member = self._members.get(stream)
        if member is not None:
            if member.client == client:
                return
            self.counts.leave(member)
        member = self._members[stream] = HttpConnection(client)
        self.counts.join(client, member)
        try:
            await self.jobs.admit_connection(client)
        except ProtocolError as err:
            if err.code != ErrorCode.RATE_LIMITED:
                return  # Redis could not say: let it in, as a WebSocket is; counted once Redis answers
            if self._members.get(stream) is member:
                del self._members[stream]
            self.counts.leave(member)
            raise

    def closed(self, stream: IOStream) -> None:
        member = self._members.pop(stream, None)
        if member is not None:
            self.counts.leave(member)


def declared_length(headers: httputil.HTTPHeaders) -> int:
    """The body size ``Content-Length`` announces; 0 when it says nothing usable (Tornado refuses garbage itself)."""
    value = headers.get("Content-Length", "").split(",")[0].strip()
    return int(value) if value.isdigit() else 0


class _BodyLimit(PassingDelegate):
    """Answers 413 to a request whose ``Content-Length`` is over the limit; passes anything else on."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate, request_conn, limit: int):
        super().__init__(delegate)
        self.request_conn = request_conn
        self.limit = limit

    def headers_received(self, start_line, headers: httputil.HTTPHeaders):
        length = declared_length(headers)
        if length <= self.limit:
            return self.delegate.headers_received(start_line, headers)
        # Take the stream from Tornado, so that it reads no byte of the body.
        peer = getattr(self.request_conn.context, "remote_ip", "?")
        stream = self.request_conn.detach()
        access_log.info("413 %s %s (%s) announced %d bytes", start_line.method, urlsplit(start_line.path).path,
                        peer, length)
        body = protocol.error(ProtocolError(ErrorCode.TOO_LARGE, f"the body is over {self.limit} bytes")).encode()
        head = (
            "HTTP/1.1 413 Content Too Large\r\n"
            "Content-Type: application/json\r\nCache-Control: no-store\r\nReferrer-Policy: no-referrer\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        IOLoop.current().add_callback(_answer_and_close, stream, head + body)
        return None


async def _answer_and_close(stream: IOStream, response: bytes) -> None:
    try:
        await stream.write(response)
        deadline = IOLoop.current().time() + LINGER_S
        dropped = 0
        while dropped < LINGER_BYTES:
            chunk = await gen.with_timeout(deadline, stream.read_bytes(_READ_CHUNK, partial=True),
                                           quiet_exceptions=StreamClosedError)
            dropped += len(chunk)
    except (StreamClosedError, TimeoutError):
        pass  # the client went, or lingered long enough
    finally:
        stream.close()
