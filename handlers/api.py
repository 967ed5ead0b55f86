"""The HTTP API: the WebSocket protocol's requests and messages, over plain HTTP.

    POST /api/factorial        {"number": N, "ref": ...}  -> 202 acknowledgement
    GET  /api/tasks/<task_id>                             -> 200 success, status or error

Bodies are the protocol's own messages (docs/protocol.md), validated by the
same ``protocol.parse_request``; a finished job's body is the stored success
message, forwarded byte for byte.
"""

from __future__ import annotations

import json
import logging

import tornado.web

import protocol
from handlers.context import ServiceContext
from jobs.store import FAILED, FINISHED, MISSING, JobState
from protocol import ErrorCode, ProtocolError

log = logging.getLogger(__name__)

# HTTP status for each error code a request can get; anything else is 400.
_HTTP_STATUS = {
    ErrorCode.UNKNOWN_TASK_ID: 404,
    ErrorCode.BUSY: 503,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.RATE_LIMITED: 429,
}


def factorial_frame(body: bytes) -> str:
    """The WebSocket frame a ``POST /api/factorial`` body stands for.

    The route already says the request type, so the body may leave ``type``
    out (or say ``factorial``). It is spliced in as text, because decoding and
    re-encoding would turn an over-long integer into something parse_request
    judges differently.
    """
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.BAD_JSON) from None
    try:
        # Integers stay text here: this look only checks the type.
        message = json.loads(text, parse_int=str)
    except (ValueError, RecursionError):
        raise ProtocolError(ErrorCode.BAD_JSON) from None
    if not isinstance(message, dict):
        raise ProtocolError(ErrorCode.BAD_JSON)
    if message.get("type", "factorial") != "factorial":
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE)
    rest = text[1:].lstrip()
    return '{"type":"factorial"' + ("" if rest.startswith("}") else ",") + rest


class _ApiHandler(tornado.web.RequestHandler):
    def initialize(self, context: ServiceContext) -> None:
        self.context = context

    def reply(self, status: int, body: bytes | str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(body)

    def reply_error(self, err: ProtocolError, ref=None) -> None:
        self.reply(_HTTP_STATUS.get(err.code, 400), protocol.error(err, ref))


class FactorialApiHandler(_ApiHandler):
    async def post(self) -> None:
        if len(self.request.body) > self.context.settings.max_frame_bytes:
            # The WebSocket closes with 1009 here; HTTP has its own status.
            self.reply(413, protocol.error(ProtocolError(ErrorCode.BAD_JSON)))
            return
        try:
            request = protocol.parse_request(factorial_frame(self.request.body), self.context.settings.max_number)
        except ProtocolError as err:
            self.reply_error(err)
            return
        try:
            state: JobState = await self.context.tasks.submit(request.number)
        except ProtocolError as err:
            self.reply_error(err, request.ref)
            return
        self.context.metrics.job_accepted(state.queue, state.status)
        self.set_header("Location", f"/api/tasks/{state.task_id}")
        self.reply(202, protocol.ack(state.task_id, state.status, state.queue, request.ref))


class TaskApiHandler(_ApiHandler):
    async def get(self, task_id: str) -> None:
        try:
            request = protocol.parse_request(
                json.dumps({"type": "result", "task_id": task_id}), self.context.settings.max_number
            )
            state: JobState = await self.context.tasks.lookup(request.task_id)
        except ProtocolError as err:
            self.reply_error(err)
            return
        if state.status == FINISHED:
            self.reply(200, state.payload)
        elif state.status == FAILED:
            # The job is known and its answer is this error: the lookup itself worked.
            self.reply(200, protocol.error(state.error))
        elif state.status == MISSING:
            self.reply_error(ProtocolError(
                ErrorCode.UNKNOWN_TASK_ID, f"no task with id {task_id!r} (unknown, or its result expired)",
                task_id=task_id))
        else:
            self.reply(200, protocol.status(state.task_id, state.status))
