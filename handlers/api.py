"""The HTTP API: the WebSocket protocol's requests and messages, over plain HTTP.

    POST /api/factorial        {"number": N, "ref": ...}  -> 202 acknowledgement
    GET  /api/tasks/<task_id>                             -> 200 success, status or error
    DELETE /api/tasks/<task_id>                           -> 200 cancelled (this client's hold withdrawn)

Bodies are the protocol's own messages (docs/protocol.md), validated by the
same ``protocol.parse_request``; a finished job's body is the stored success
message, forwarded byte for byte.
"""

from __future__ import annotations

import logging

import protocol
from handlers import origins
from handlers.context import ServiceContext
from handlers.errors import JsonRequestHandler
from handlers.limits import RequestRate
from jobs.states import MISSING, JobState
from jobs.store import ANONYMOUS
from protocol import ErrorCode, ProtocolError

log = logging.getLogger(__name__)

# HTTP status for each error code a request can get; anything else is 400.
_HTTP_STATUS = {
    ErrorCode.UNKNOWN_TASK_ID: 404,
    ErrorCode.BUSY: 503,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAUTHORIZED: 401,
}


def factorial_message(body: bytes) -> dict:
    """The protocol request a ``POST /api/factorial`` body stands for.

    The route already says the request type, so the body may leave ``type``
    out (or say ``factorial``).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.BAD_JSON) from None
    message = protocol.decode(text)
    message.setdefault("type", "factorial")
    if message["type"] != "factorial":
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE)
    return message


class _ApiHandler(JsonRequestHandler):
    def initialize(self, context: ServiceContext) -> None:
        self.context = context

    async def prepare(self) -> None:
        """Refuse a cross-site browser request (handlers/origins.py), tell who this is, count its connection."""
        origin = self.request.headers.get("Origin")
        if origins.refused(self.request.method, origin, self.request.host, self.context.settings.allowed_origins):
            text = f"a page at {origin} may not send {self.request.method} here (ALLOWED_ORIGINS)"
            self.reply(403, protocol.error(ProtocolError(ErrorCode.BAD_REQUEST, text)))
            return
        try:
            self.identity = self.context.identifier.identify(self.request)
            if self.context.http_connections is not None:
                await self.context.http_connections.admit(self.request.connection.stream, self.identity.client)
        except ProtocolError as err:
            self.reply_error(err)

    def reply(self, status: int, body: bytes | str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(body)

    def _counts_jobs_to_their_end(self) -> bool:
        """Whether an accepted job stays in flight for its HTTP client until it ends (CLIENT_MAX_IN_FLIGHT):
        an HTTP client holds no connection to be told of the end, so the delivery loop waits in its place."""
        return self.context.counts.enabled and bool(self.context.settings.client_max_in_flight)

    def reply_error(self, err: ProtocolError, ref=None) -> None:
        if err.code == ErrorCode.UNAUTHORIZED:
            self.set_header("WWW-Authenticate", 'Bearer realm="factorial"')
        elif err.code == ErrorCode.RATE_LIMITED:
            self.set_header("Retry-After", "1")  # seconds: the rate's bucket refills within one
        self.reply(_HTTP_STATUS.get(err.code, 400), protocol.error(err, ref))


class FactorialApiHandler(_ApiHandler):
    async def post(self) -> None:
        if len(self.request.body) > self.context.settings.max_frame_bytes:
            # The WebSocket closes with 1009 here; HTTP has its own status.
            limit = self.context.settings.max_frame_bytes
            self.reply(413, protocol.error(ProtocolError(ErrorCode.TOO_LARGE, f"the body is over {limit} bytes")))
            return
        try:
            request = protocol.parse_message(factorial_message(self.request.body), self.context.settings.max_number)
        except ProtocolError as err:
            self.reply_error(err)
            return
        client = self.identity.client
        ticket = self.context.counts.in_flight.start(client)
        state: JobState | None = None
        try:
            state = await self.context.jobs.request_submit(request.number, client, hold=True)
        except ProtocolError as err:
            self.reply_error(err, request.ref)
            return
        finally:
            if state is not None and state.final_answer() is None and self._counts_jobs_to_their_end():
                # In flight until its job ends (or its DELETE), like a WebSocket's request.
                self.context.delivery.hold(state.task_id, client, ticket)
            else:
                ticket.end()
        self.context.metrics.job_accepted(state.queue, state.status)
        self.set_header("Location", f"/api/tasks/{state.task_id}")
        self.reply(202, protocol.ack(state.task_id, state.status, state.queue, request.ref))


class TaskApiHandler(_ApiHandler):
    async def get(self, task_id: str) -> None:
        try:
            request = protocol.parse_message({"type": "result", "task_id": task_id}, self.context.settings.max_number)
        except ProtocolError as err:
            self.reply_error(err)
            return
        client = self.identity.client
        ticket = self.context.counts.in_flight.start(client)
        try:
            state: JobState = await self.context.jobs.request_lookup(request.task_id, client)
        except ProtocolError as err:
            self.reply_error(err)
            return
        finally:
            ticket.end()
        answer = state.final_answer()
        if answer is None:
            self.reply(200, protocol.status(state.task_id, state.status))
        elif state.status == MISSING:
            self.reply_error(answer)
        elif isinstance(answer, ProtocolError):
            # The job is known and its answer is this error: the lookup itself worked.
            self.reply(200, protocol.error(answer))
        else:
            self.reply(200, answer)

    async def delete(self, task_id: str) -> None:
        """Cancel: withdraw this client's hold (from its POST); the job stops only if no one else waits for it."""
        try:
            request = protocol.parse_message({"type": "cancel", "task_id": task_id}, self.context.settings.max_number)
            await RequestRate.of(self.context.jobs).admit(self.identity.client)  # enqueues nothing, but costs Redis
            # Withdraws this client's own hold only; connections of this server
            # that wait for the task keep it going (protocol: a cancel withdraws
            # only the canceller's wait).
            delivery = self.context.delivery
            client = self.identity.client or ANONYMOUS
            delivery.release(request.task_id, client)  # its POST's job is no longer in flight for it
            outcome = await self.context.jobs.request_cancel(request.task_id, delivery.server_id,
                                                             delivery.others_wait(request.task_id, None),
                                                             holder=client)
        except ProtocolError as err:
            self.reply_error(err)
            return
        self.reply(200, protocol.cancelled(request.task_id, outcome))
