"""Every WebSocket frame and HTTP response the tests' clients see, held against the contract documents.

One place for all: the tests' clients are Tornado's (``websocket_connect``,
``AsyncHTTPClient``) and urllib's, so ``install()`` wraps those classes once,
and every session goes through it, whether a test uses tests/helpers.py's
Client, ``websocket_connect`` directly, or the project's own clients in process.
What the documents do not describe is kept in ``VIOLATIONS``, and the autouse
fixture in tests/conftest.py fails the test that saw it.

A frame a test sends on purpose that the document does not describe (bad JSON,
``"number": -1``) is allowed: the server must answer it with an error. What is
checked is the other side: the server may call a frame malformed only if the
document does not describe it either.
"""

from __future__ import annotations

import io
import json
import threading
import urllib.request
import urllib.response
from urllib.parse import urlsplit

from tornado import simple_httpclient
from tornado.websocket import WebSocketClientConnection

from tests.contract.documents import frame_contract, response_contract, shown

# The error codes that say a request itself is malformed; MAX_NUMBER is a setting, so
# number_too_large is not among them.
MALFORMED = {"bad_json", "unknown_type", "invalid_number", "invalid_task_id", "invalid_ref"}
# Close codes any peer may see besides the server's own: none given, normal closure.
NEUTRAL_CLOSE_CODES = {None, 1000, 1005}

VIOLATIONS: list[str] = []
# Tests whose WebSocket peer at /ws is plain Tornado standing in for the service, to pin
# Tornado's own behaviour: their frames are not the protocol's. By fixture, or marked
# ``@pytest.mark.foreign_websocket_peer``.
FOREIGN_PEER_FIXTURES = {"plain_tornado_url", "flooding_port"}
FOREIGN_PEER_MARKER = "foreign_websocket_peer"
checking_websockets = True
_installed = threading.Lock()
_done = False


def install() -> None:
    """Wrap the clients' classes (once per process)."""
    global _done
    with _installed:
        if _done:
            return
        _wrap_websocket_client()
        _wrap_tornado_http_client()
        urllib.request.install_opener(urllib.request.build_opener(_ContractProcessor()))
        _done = True


# --- WebSocket ---------------------------------------------------------------


class _Session:
    """What one connection sent that the document does not describe, and what it heard called malformed."""

    def __init__(self, url: str):
        self.url = url
        self.undescribed_sent: list[str] = []
        self.malformed_heard = 0
        self.own_close_code = None


def _session(connection) -> _Session | None:
    """The contract state of a connection to the service's ``/ws`` (None for other endpoints)."""
    if not checking_websockets:
        return None
    session = getattr(connection, "_contract_session", None)
    if session is None:
        url = connection.request.url
        if not urlsplit(url).path.endswith("/ws"):
            return None
        session = connection._contract_session = _Session(url)
    return session


def _wrap_websocket_client() -> None:
    write_message = WebSocketClientConnection.write_message
    on_message = WebSocketClientConnection.on_message
    close = WebSocketClientConnection.close
    on_ws_connection_close = WebSocketClientConnection.on_ws_connection_close

    def checked_write_message(self, message, binary=False):
        session = _session(self)
        if session is not None:
            why = "a binary frame" if binary else frame_contract().why_request_undescribed(message)
            if why:
                session.undescribed_sent.append(f"{shown(message)} ({why})")
        return write_message(self, message, binary=binary)

    def checked_on_message(self, message):
        session = _session(self)
        if session is not None:
            _check_received(session, message)
        return on_message(self, message)

    def checked_close(self, code=None, reason=None):
        session = _session(self)
        if session is not None and session.own_close_code is None:
            session.own_close_code = code
        return close(self, code, reason)

    def checked_connection_close(self, close_code=None, close_reason=None):
        session = _session(self)
        allowed = frame_contract().close_codes | NEUTRAL_CLOSE_CODES
        if session is not None and close_code not in allowed and close_code != session.own_close_code:
            VIOLATIONS.append(f"{session.url}: closed with {close_code} ({close_reason!r}), not a documented close code")
        return on_ws_connection_close(self, close_code, close_reason)

    # A refused handshake is an HTTP response of GET /ws (docs/openapi.yaml). Tornado hands it to
    # this method of the connection only; there is no public hook.
    on_http_response = WebSocketClientConnection._on_http_response

    def checked_http_response(self, response):
        if response.code != 599:
            check_response("GET", self.request.url, response.code, response.headers, response.body)
        return on_http_response(self, response)

    WebSocketClientConnection._on_http_response = checked_http_response
    WebSocketClientConnection.write_message = checked_write_message
    WebSocketClientConnection.on_message = checked_on_message
    WebSocketClientConnection.close = checked_close
    WebSocketClientConnection.on_ws_connection_close = checked_connection_close


def _check_received(session: _Session, message) -> None:
    contract = frame_contract()
    why = "a binary frame" if isinstance(message, bytes) else contract.why_message_undescribed(message)
    if why:
        VIOLATIONS.append(f"{session.url}: received a frame docs/asyncapi.yaml does not describe: {shown(message)}: {why}")
        return
    if message.startswith('{"type":"error"'):
        code = json.loads(message).get("code")
        if code in MALFORMED:
            session.malformed_heard += 1
            if session.malformed_heard > len(session.undescribed_sent):
                VIOLATIONS.append(
                    f"{session.url}: the server answered {code} ({shown(message)}), but every frame this connection "
                    f"sent is a request docs/asyncapi.yaml describes (undescribed ones: {session.undescribed_sent})")


# --- HTTP --------------------------------------------------------------------


def check_response(method: str, url: str, status: int, headers, body: bytes | None) -> None:
    """Record a response docs/openapi.yaml does not describe."""
    why = response_contract().why_undescribed(method, urlsplit(url).path, status, headers, body)
    if why:
        VIOLATIONS.append(f"{method} {urlsplit(url).path}: {why}")


def _wrap_tornado_http_client() -> None:
    fetch_impl = simple_httpclient.SimpleAsyncHTTPClient.fetch_impl

    def checked_fetch_impl(self, request, callback):
        def checked_callback(response):
            # 599: no HTTP response at all (refused, timed out); a streamed body is not kept.
            if response.code != 599:
                body = None if request.streaming_callback else response.body
                check_response(request.method, request.url, response.code, response.headers, body)
            return callback(response)

        return fetch_impl(self, request, checked_callback)

    simple_httpclient.SimpleAsyncHTTPClient.fetch_impl = checked_fetch_impl


class _ContractProcessor(urllib.request.BaseHandler):
    """urllib: reads each response, checks it, and hands on an identical one."""

    handler_order = 900  # before HTTPErrorProcessor (1000), so error statuses are checked too

    def http_response(self, request, response):
        body = response.read()
        response.close()
        check_response(request.get_method(), request.full_url, response.status, response.headers, body)
        replay = urllib.response.addinfourl(io.BytesIO(body), response.headers, response.url, response.status)
        replay.msg = response.msg
        return replay

    https_response = http_response
