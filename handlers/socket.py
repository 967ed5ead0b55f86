"""The WebSocket endpoint ``/ws``: requests in, acknowledgements and results out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from tornado.websocket import WebSocketClosedError, WebSocketHandler, WebSocketProtocol13

import protocol
from handlers import origins
from handlers.context import ServiceContext
from handlers.errors import http_error
from handlers.drain import SERVICE_RESTART, SERVICE_RESTART_TEXT
from handlers.redis_watch import RedisWatch
from handlers.in_flight import Ticket
from handlers.limits import RequestBudget, RequestRate
from handlers.outbox import UNREAD_CLOSE_CODE, UNREAD_CLOSE_TEXT, Outbox
from jobs.states import MISSING, JobState
from protocol import CancelRequest, ErrorCode, FactorialRequest, ProtocolError, Request, ResultRequest

log = logging.getLogger(__name__)

# The reason Tornado closes a connection with when no pong came within websocket_ping_timeout.
PING_TIMED_OUT = "ping timed out"


class FactorialSocket(WebSocketHandler):
    def initialize(self, context: ServiceContext, watch: RedisWatch) -> None:
        self.context = context
        # Answers "unavailable" when Redis is silent, and closes with 1013 when it stays so.
        self.watch = watch
        # Answers leave in the order their requests arrived (protocol:
        # Transport), even when a later one is ready first.
        # Each holds the request's place in flight (handlers/in_flight.py).
        self._answers: deque[tuple[Request | None, asyncio.Future, float, Ticket]] = deque()
        self._budget = RequestBudget(context.settings)
        # Frames owed to the peer, written as fast as it reads them (handlers/outbox.py).
        self._outbox = Outbox(context.settings.client_max_unsent_bytes, self._write, self._buffer_empty,
                              emptied=self._close_if_done)
        self._counted_unsent = False  # its outbox adds to its client's share (from open to on_close)
        # Metrics: when this connection first asked for each job it waits for.
        self._asked_at: dict[str, float] = {}
        # The close code and reason to send once every request is answered (drain: 1012, Redis lost: 1013).
        self._closing_when_answered: tuple[int, str] | None = None

    async def prepare(self) -> None:
        """Tell who this is before the handshake, and count the connection for its client.

        A wrong or missing API key is refused here with 401, a client over its
        connection limit (on every server together) with 429.
        """
        try:
            self.identity = self.context.identifier.identify(self.request)
        except ProtocolError as err:
            self.refuse(401, err)
            return
        # The name fair share counts this connection's requests under.
        self.client = self.identity.client
        self.context.counts.join(self.client, self)
        try:
            # Bounded: a silent Redis must not hold the handshake for a socket timeout.
            await self.watch.bounded(self.context.jobs.admit_connection(self.client), time.monotonic())
        except ProtocolError as err:
            if err.code == ErrorCode.RATE_LIMITED:
                self.context.counts.leave(self)
                self.refuse(429, err)
            # Otherwise Redis could not say: let it in; its count is written
            # once Redis answers again.

    def on_finish(self) -> None:
        if self.get_status() != 101:  # the handshake failed: this is no connection
            self.context.counts.leave(self)

    def refuse(self, status: int, err: ProtocolError) -> None:
        """Answer the handshake with an HTTP error whose body is the protocol's error message."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        if status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="factorial"')
        elif status == 429:
            self.set_header("Retry-After", "1")  # seconds; a connection closing anywhere frees a place
        self.finish(protocol.error(err))

    def finish(self, chunk=None):
        """Tornado refuses a bad handshake (no Upgrade header, a foreign Origin, an old
        protocol version) with a plain-text body; here it is the protocol's JSON error,
        as every HTTP error of the service is."""
        status = self.get_status()
        if self.ws_connection is None and status >= 400 and not _is_json(chunk):
            text = chunk.decode(errors="replace") if isinstance(chunk, bytes) else chunk
            self.set_header("Content-Type", "application/json")
            chunk = protocol.error(http_error(status, self.request, text or None))
        return super().finish(chunk)

    def check_origin(self, origin: str) -> bool:
        """Accept handshakes from the server's own pages and the configured origins (handlers/origins.py).

        Clients that are not browsers (wscat, scripts) send no Origin and are not checked.
        """
        return origins.allowed(origin, self.request.host, self.context.settings.allowed_origins)

    def get_compression_options(self):
        return {} if self.context.settings.websocket_compression else None

    def get_websocket_protocol(self):
        # Tornado's own choice and settings, with one method stricter: see StrictUtf8Protocol.
        chosen = super().get_websocket_protocol()
        if not isinstance(chosen, WebSocketProtocol13):
            return chosen
        return StrictUtf8Protocol(self, False, chosen.params)

    def open(self) -> None:
        self.set_nodelay(True)
        self._outbox.share = self.context.unsent.join(self.client)
        self._counted_unsent = True
        self.context.metrics.connection_opened()
        self.context.drain.opened(self)
        self.watch.opened(self)

    def on_close(self) -> None:
        self._outbox.drop()
        if self._counted_unsent:
            self._counted_unsent = False
            self.context.unsent.leave(self.client, self._outbox.share)
        self.context.drain.closed(self)
        self.watch.closed(self)
        self.context.delivery.forget(self)
        self.context.counts.in_flight.end_all(self)  # the requests not answered yet
        self.context.counts.leave(self)
        self.context.metrics.connection_closed()

    def on_message(self, frame):
        if self.ws_connection is None or self.ws_connection.is_closing():
            return None  # arrived after our close (1012, 1008): no answer could reach the peer, so start no job
        request: Request | None = None
        try:
            try:
                request = protocol.parse_request(frame, self.context.settings.max_number)
            finally:
                # Every frame counts against the budget, bad ones too, so a
                # flood of garbage is held back like any other. A cancel only
                # against the rate: it is how a client at its in-flight limit
                # makes room.
                in_flight = self.context.counts.in_flight.of(self)
                self._budget.admit(0 if isinstance(request, CancelRequest) else in_flight)
        except ProtocolError as err:
            self._queue_answer(request, _failed_future(err if request is None else err.with_ref(request.ref)))
            if err.code == ErrorCode.RATE_LIMITED:
                # Backpressure: Tornado reads no further frame from this
                # connection until this returns, so a flooding client costs
                # the loop about one frame per token, not one per frame sent.
                return asyncio.sleep(1 / max(self.context.settings.max_requests_per_s, 1))
            return None
        if isinstance(request, FactorialRequest):
            self._queue_answer(request, self.context.jobs.request_submit(request.number, self.client))
        elif isinstance(request, CancelRequest):
            delivery = self.context.delivery
            others_here = delivery.others_wait(request.task_id, self)
            self._queue_answer(request, asyncio.ensure_future(self._cancel(request.task_id, others_here)))
        else:
            self._queue_answer(request, self.context.jobs.request_lookup(request.task_id, self.client))

    async def _cancel(self, task_id: str, others_here: bool) -> str:
        """Cancel, counted against the client's request rate as an HTTP DELETE is (it starts no job)."""
        await RequestRate.of(self.context.jobs).admit(self.client)
        return await self.context.jobs.request_cancel(task_id, self.context.delivery.server_id, others_here)

    def send(self, frame: bytes | str, ref=None) -> int:
        """Send one frame (``ref`` added to it, protocol.with_ref, when it is written); return its size,
        or 0 (and forget this connection) if it is closed.

        Frames leave in order, as fast as the peer reads them. A peer owed more
        than ``CLIENT_MAX_UNSENT_BYTES``, or whose client's connections here are owed
        more than ``CLIENT_MAX_UNSENT_BYTES_TOTAL`` together, is closed with 1008
        (protocol: Transport).
        """
        sent = self._outbox.send(frame, ref)
        if self._outbox.over_limit:
            self._close_unread()
            return 0
        if not sent:
            self.context.delivery.forget(self)
        return sent

    def _write(self, frame: bytes | str) -> asyncio.Future | None:
        """Hand one frame to Tornado (the outbox's way out); None once the connection is closed."""
        try:
            written = self.write_message(frame)
        except WebSocketClosedError:
            return None
        written.add_done_callback(_ignore_closed)
        return written

    def _buffer_empty(self) -> bool:
        # IOStream.writing() (public) says whether Tornado's write buffer holds anything.
        connection = self.ws_connection
        return connection is None or connection.stream is None or not connection.stream.writing()

    def _close_unread(self) -> None:
        """Close a connection that does not read what it is sent: 1008, and nothing more goes to it."""
        log.warning("closing a connection of %s that does not read: %d bytes owed (CLIENT_MAX_UNSENT_BYTES=%d), "
                    "%d to the client's connections here (CLIENT_MAX_UNSENT_BYTES_TOTAL=%d)",
                    self.client, self._outbox.unsent, self._outbox.limit, self._outbox.share.bytes,
                    self._outbox.share.limit)
        self._outbox.drop()
        self.context.metrics.connection_closed_unread()
        self.context.delivery.forget(self)
        self.close(UNREAD_CLOSE_CODE, UNREAD_CLOSE_TEXT)

    # --- answering in order ---------------------------------------------------

    def _queue_answer(self, request: Request | None, answer: asyncio.Future) -> None:
        asked_at = time.monotonic()
        answer = self.watch.bounded(answer, asked_at)
        self._answers.append((request, answer, asked_at, self.context.counts.in_flight.start(self.client, self)))
        answer.add_done_callback(lambda _: self._send_ready_answers())

    def _send_ready_answers(self) -> None:
        while self._answers and self._answers[0][1].done():
            request, answer, asked_at, ticket = self._answers.popleft()
            awaits_job = False
            try:
                awaits_job = self._answer(request, answer.result(), asked_at, ticket)
            except ProtocolError as err:
                self.send(protocol.error(err, request.ref if request else None))
            except Exception:  # noqa: BLE001 - a bug must not cost the connection
                log.exception("Answering %r failed", request)
                self.send(protocol.error(ProtocolError(ErrorCode.JOB_FAILED, "internal error", ref=request.ref)))
            finally:
                if not awaits_job:
                    ticket.end()  # answered: no longer in flight
        self._close_if_done()

    def close_when_answered(self, code: int = SERVICE_RESTART, reason: str = SERVICE_RESTART_TEXT) -> None:
        """Close with ``code`` (1012 by default: the server restarts) once every frame received so far is answered."""
        if self._closing_when_answered is None:  # the first reason given stands
            self._closing_when_answered = (code, reason)
        self._close_if_done()

    def _close_if_done(self) -> None:
        """Close as close_when_answered asked, once every answer is answered and handed to Tornado."""
        if self._closing_when_answered and not self._answers and self._outbox.empty:
            self.close(*self._closing_when_answered)

    def _answer(self, request: Request, state: JobState, asked_at: float, ticket: Ticket) -> bool:
        """Send the answer; True when the request waits for its job (``ticket`` then ends with it, delivery.py)."""
        ref = request.ref
        if isinstance(request, CancelRequest):
            # Answered in order: requests before it (which may have started a
            # wait) are answered already, and nothing more about it follows.
            self.context.delivery.unwatch(request.task_id, self)
            self._asked_at.pop(request.task_id, None)
            self.send(protocol.cancelled(request.task_id, state, ref))
            return False
        if isinstance(request, FactorialRequest):
            self.send(protocol.ack(state.task_id, state.status, state.queue, ref))
            self.context.metrics.job_accepted(state.queue, state.status)
            self._asked_at.setdefault(state.task_id, asked_at)
            log.info("accepted task=%s queue=%s number=%d state=%s", state.task_id, state.queue,
                     request.number, state.status)
        answer = state.final_answer()
        if isinstance(answer, ProtocolError):
            self.send(protocol.error(answer, ref))
            if state.status != MISSING:
                self.delivered(state.task_id, answer.code.value)
        elif answer is not None:
            self.send(answer, ref)  # the stored message: its copy with the ref is made as it leaves
            self.delivered(state.task_id, "success")
        else:
            if isinstance(request, ResultRequest):
                self.send(protocol.status(state.task_id, state.status, ref))
            if self.ws_connection is not None and not self.ws_connection.is_closing():
                self.context.delivery.watch(state.task_id, self, ref, state.status, ticket)
                return True
        return False

    # --- metrics ----------------------------------------------------------------

    def delivered(self, task_id: str, outcome: str) -> None:
        """Count and log a final answer that left; the delivery loop calls this too."""
        asked_at = self._asked_at.pop(task_id, None)
        elapsed = None if asked_at is None else time.monotonic() - asked_at
        self.context.metrics.result_delivered(outcome, elapsed)
        log.info("delivered task=%s outcome=%s after_ms=%s", task_id, outcome,
                 "-" if elapsed is None else f"{elapsed * 1000:.1f}")


def _ignore_closed(written: asyncio.Future) -> None:
    # A peer that goes away mid-write fails this future: expected, not an error.
    if not written.cancelled() and not isinstance(written.exception(), (WebSocketClosedError, type(None))):
        log.error("Writing a frame failed", exc_info=written.exception())


def _is_json(chunk) -> bool:
    return isinstance(chunk, (str, bytes)) and chunk[:1] in ("{", b"{")


def _failed_future(err: ProtocolError) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_exception(err)
    return future


class StrictUtf8Protocol(WebSocketProtocol13):
    """Closes with 1007 on a text frame that is not UTF-8 (RFC 6455, sections 7.4.1 and 8.1).

    Tornado fails such a connection by dropping it without a close frame
    (1006 at the client), and offers no public hook between a frame's bytes
    and ``on_message``. So this one method is overridden. It and the helpers
    it needs (``_frame_compressed``, ``_abort``, and the protocol's ``params``,
    an instance of Tornado's private ``_WebSocketParams``, passed on unchanged
    in ``get_websocket_protocol``) are the private names of Tornado the service
    uses. tests/handlers/test_socket_utf8.py pins both halves: that Tornado
    still drops the connection without it, and that the override still sees
    every text frame.
    """

    def _handle_message(self, opcode, data):
        if opcode == 0x1 and not self._frame_compressed:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                self.close(1007, "invalid UTF-8")
                self._abort()
                return None
        return super()._handle_message(opcode, data)

    def close(self, code=None, reason=None):
        super().close(code, reason)
        if reason == PING_TIMED_OUT:
            # A peer that answers no ping will not answer the close frame
            # either: drop it now, not after Tornado's 5 s wait for its
            # answer, so its counts are freed within interval + timeout
            # (tests/handlers/test_front_door.py pins Tornado's reason text).
            self._abort()
