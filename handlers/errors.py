"""Every HTTP error as the protocol's error message, and an access log at levels that fit.

Tornado answers the errors it raises itself (a path no route serves, a method a
handler lacks, an exception in a handler) with an HTML page. Here they are the
protocol's ``{"type": "error", "code": ..., "result": ...}``, as every other
answer of the HTTP API is, so a client reads one shape whatever went wrong.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

import tornado.web

import protocol
from handlers.identity import logged_client
from protocol import ErrorCode, ProtocolError

access_log = logging.getLogger("tornado.access")

# HTTP's own errors, by status; any other 4xx is ``bad_request``, any 5xx ``internal_error``.
_CODES = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.TOO_LARGE,
}
ROUTES_TEXT = ("the service is POST /api/factorial, GET and DELETE /api/tasks/<task_id>, /ws, /healthz "
               "and /metrics")


def http_error(status: int, request, text: str | None = None) -> ProtocolError:
    """The protocol's error for an HTTP error ``status`` that ``request`` got (``text``: why, if known)."""
    code = _CODES.get(status, ErrorCode.INTERNAL_ERROR if status >= 500 else ErrorCode.BAD_REQUEST)
    if text and code == ErrorCode.BAD_REQUEST:
        return ProtocolError(code, text)
    if code == ErrorCode.NOT_FOUND:
        return ProtocolError(code, f"nothing at {request.path}; {ROUTES_TEXT}")
    if code == ErrorCode.METHOD_NOT_ALLOWED:
        return ProtocolError(code, f"{request.method} is not allowed on {request.path}")
    if code == ErrorCode.INTERNAL_ERROR:
        # The traceback is in the server's log, not for the client.
        return ProtocolError(code, "internal error; please retry")
    try:
        return ProtocolError(code, HTTPStatus(status).phrase.lower())
    except ValueError:
        return ProtocolError(code, f"HTTP status {status}")


class JsonErrors:
    """Mixin for a ``RequestHandler``: its errors are the protocol's JSON error messages."""

    def set_default_headers(self) -> None:
        # A page opened as /?api_key=KEY must not pass its address, key and
        # all, to the sites its links and requests go to.
        self.set_header("Referrer-Policy", "no-referrer")

    def write_error(self, status_code: int, **kwargs) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(protocol.error(http_error(status_code, self.request)))


class JsonRequestHandler(JsonErrors, tornado.web.RequestHandler):
    """The base of every HTTP handler of the service."""


class StaticFiles(JsonErrors, tornado.web.StaticFileHandler):
    """The page's files; a missing one is a JSON 404 too."""


class NotFoundHandler(JsonRequestHandler):
    """Answers every path no route serves (the application's ``default_handler_class``)."""

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404)


def log_request(handler: tornado.web.RequestHandler) -> None:
    """The access log: a client's mistake (4xx, a missing file) is INFO, only the server's own (5xx) is louder.

    Tornado logs every 4xx as a WARNING, so each browser asking for a file the
    page does not have would read like a fault of the service.
    """
    status = handler.get_status()
    level = logging.ERROR if status >= 500 else logging.INFO
    request = handler.request
    # The client as handlers/identity.py believes it. The path only: a query
    # string may hold an API key, in whatever spelling.
    access_log.log(level, "%d %s %s (%s) %.2fms", status, request.method, request.path,
                   logged_client(handler), 1000 * request.request_time())
