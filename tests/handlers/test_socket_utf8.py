"""Strict UTF-8 on /ws, and why handlers/socket.py's StrictUtf8Protocol overrides a private method.

Both halves are pinned: Tornado's own protocol still fails a connection on a
text frame that is not UTF-8 by dropping it without a close frame (so the
override is still needed), and the server closes such a connection with 1007
(RFC 6455, section 8.1), whether the frame came whole or in fragments.
"""

import json

import pytest
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.websocket import WebSocketHandler

from tests.helpers import Client, free_port

INVALID = b'{"type": "result", "task_id": "\xff"}'


class PlainEcho(WebSocketHandler):
    """Tornado's own WebSocket handling, nothing overridden."""

    received: list = []

    def on_message(self, message):
        self.received.append(message)
        self.write_message(message)


@pytest.fixture
def plain_tornado_url(io_loop):
    port = free_port()
    server = HTTPServer(tornado.web.Application([(r"/ws", PlainEcho)]))
    server.listen(port, "127.0.0.1")
    yield f"ws://127.0.0.1:{port}/ws"
    server.stop()


@pytest.mark.gen_test(timeout=30)
async def test_tornado_alone_drops_the_connection_without_a_1007_close(plain_tornado_url):
    PlainEcho.received = []
    client = await Client.connect(plain_tornado_url)
    await client.connection.write_message("é")
    assert await client.connection.read_message() == "é"

    await client.connection.write_message(INVALID, binary=False)  # a text frame, not UTF-8
    assert await client.connection.read_message() is None
    # No close frame came: had Tornado started sending 1007, StrictUtf8Protocol could go.
    assert client.connection.close_code is None
    assert PlainEcho.received == ["é"]


@pytest.mark.gen_test(timeout=30)
async def test_the_server_closes_with_1007_on_a_text_frame_that_is_not_utf8(ws_url, redis_url):
    client = await Client.connect(ws_url)
    # Valid UTF-8 beyond ASCII passes the check and reaches the protocol.
    answer = await client.ask({"type": "result", "task_id": "é", "ref": "ü"})
    assert answer["code"] == "unknown_task_id" and answer["ref"] == "ü"

    await client.connection.write_message(INVALID, binary=False)
    assert await client.connection.read_message() is None
    assert client.connection.close_code == 1007
    assert client.connection.close_reason == "invalid UTF-8"


@pytest.mark.gen_test(timeout=30)
async def test_the_server_closes_with_1007_when_the_bad_byte_comes_in_a_continuation_frame(ws_url, redis_url):
    client = await Client.connect(ws_url)
    protocol = client.connection.protocol
    # Fragments written below the client's API (it never fragments): the check
    # must see the whole message, as Tornado assembles it.
    protocol._write_frame(False, 0x1, INVALID[:10])
    protocol._write_frame(True, 0x0, INVALID[10:])
    assert await client.connection.read_message() is None
    assert client.connection.close_code == 1007


@pytest.mark.gen_test(timeout=30)
async def test_a_valid_fragmented_message_is_answered(ws_url, redis_url):
    client = await Client.connect(ws_url)
    frame = json.dumps({"type": "result", "task_id": "0123456789abcdef0123456789abcdef", "ref": "é"}).encode()
    client.connection.protocol._write_frame(False, 0x1, frame[:7])
    client.connection.protocol._write_frame(True, 0x0, frame[7:])
    answer = await client.receive()
    assert answer["code"] == "unknown_task_id" and answer["ref"] == "é"
