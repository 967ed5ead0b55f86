"""The HTTP API: the WebSocket protocol's requests and messages, over plain HTTP.

    POST /api/factorial        {"number": N, "ref": ...}  -> 202 acknowledgement
    GET  /api/tasks/<task_id>                             -> 200 success, status or error

Bodies are the protocol's own messages (docs/protocol.md), validated by the
same ``protocol.parse_request``; a finished job's body is the stored success
message, forwarded byte for byte.
"""

from __future__ import annotations

import logging

import protocol
from handlers.context import ServiceContext
from handlers.errors import JsonRequestHandler
from jobs.states import MISSING, JobState
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

    def prepare(self) -> None:
        try:
            self.identity = self.context.identifier.identify(self.request)
        except ProtocolError as err:
            self.reply_error(err)

    def reply(self, status: int, body: bytes | str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(body)

    def reply_error(self, err: ProtocolError, ref=None) -> None:
        if err.code == ErrorCode.UNAUTHORIZED:
            self.set_header("WWW-Authenticate", 'Bearer realm="factorial"')
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
        try:
            state: JobState = await self.context.jobs.submit(request.number)
        except ProtocolError as err:
            self.reply_error(err, request.ref)
            return
        self.context.metrics.job_accepted(state.queue, state.status)
        self.set_header("Location", f"/api/tasks/{state.task_id}")
        self.reply(202, protocol.ack(state.task_id, state.status, state.queue, request.ref))


class TaskApiHandler(_ApiHandler):
    async def get(self, task_id: str) -> None:
        try:
            request = protocol.parse_message({"type": "result", "task_id": task_id}, self.context.settings.max_number)
            state: JobState = await self.context.jobs.lookup(request.task_id)
        except ProtocolError as err:
            self.reply_error(err)
            return
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
