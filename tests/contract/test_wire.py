"""The checks of tests/contract/wire.py can fail: a peer at /ws or an HTTP server that strays from the
documents is caught, whichever client the test uses."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
import tornado.web
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.websocket import WebSocketHandler, websocket_connect

from tests.contract import wire
from tests.helpers import Client, async_wait_until, free_port

TASK_ID = "0123456789abcdef0123456789abcdef"


class Scripted(WebSocketHandler):
    """Answers each message with the next of ``answers`` (a frame, or a close code)."""

    answers: list = []

    def on_message(self, message):
        answer = Scripted.answers.pop(0)
        if isinstance(answer, int):
            self.close(answer, "scripted")
        else:
            self.write_message(answer)


class BadHealth(tornado.web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "application/json")
        self.finish('{"ok": "yes", "redis": true, "queues": {}}')


@pytest.fixture
def scripted_url(io_loop):
    port = free_port()
    server = HTTPServer(tornado.web.Application([(r"/ws", Scripted), (r"/healthz", BadHealth)]))
    server.listen(port, "127.0.0.1")
    yield f"127.0.0.1:{port}"
    server.stop()


def taken_violations(before: int) -> list[str]:
    """The violations recorded since ``before``, taken off the list (this test expects them)."""
    found = wire.VIOLATIONS[before:]
    del wire.VIOLATIONS[before:]
    return found


@pytest.mark.gen_test(timeout=20)
async def test_an_undescribed_frame_from_the_server_is_caught(scripted_url):
    Scripted.answers = [f'{{"type":"success","task_id":"{TASK_ID}","result":1.5,"digits":1}}',
                        f'{{"type":"result","task_id":"{TASK_ID}","status":"queued","queue":"soft","extra":1}}']
    before = len(wire.VIOLATIONS)
    client = await Client.connect(f"ws://{scripted_url}/ws")
    await client.ask({"type": "factorial", "number": 5})
    raw = await websocket_connect(f"ws://{scripted_url}/ws")  # tornado's client, without tests/helpers.py
    await raw.write_message('{"type":"factorial","number":5}')
    await raw.read_message()
    found = taken_violations(before)
    assert len(found) == 2 and "result" in found[0] and "extra" in found[1], found
    client.close()
    raw.close()


@pytest.mark.gen_test(timeout=20)
async def test_calling_a_described_request_malformed_is_caught_and_an_undescribed_one_is_not(scripted_url):
    bad_json = '{"type":"error","code":"bad_json","result":"JSON decode error"}'
    Scripted.answers = [bad_json, bad_json]
    before = len(wire.VIOLATIONS)
    client = await Client.connect(f"ws://{scripted_url}/ws")
    await client.ask("{")  # not JSON: bad_json is its answer
    assert taken_violations(before) == []
    await client.ask({"type": "result", "task_id": TASK_ID})  # a request the document describes
    found = taken_violations(before)
    assert len(found) == 1 and "bad_json" in found[0], found
    client.close()


@pytest.mark.gen_test(timeout=20)
async def test_an_undocumented_close_code_is_caught(scripted_url):
    Scripted.answers = [4000]
    before = len(wire.VIOLATIONS)
    client = await Client.connect(f"ws://{scripted_url}/ws")
    await client.send({"type": "result", "task_id": TASK_ID})
    await async_wait_until(lambda: len(wire.VIOLATIONS) > before, timeout=5, what="the close to be seen")
    found = taken_violations(before)
    assert len(found) == 1 and "4000" in found[0], found


@pytest.mark.gen_test(timeout=20)
async def test_an_undescribed_http_response_is_caught_from_tornado_and_urllib(scripted_url):
    before = len(wire.VIOLATIONS)
    response = await AsyncHTTPClient().fetch(f"http://{scripted_url}/healthz", raise_error=False)
    assert response.code == 200
    body = await asyncio.get_running_loop().run_in_executor(None, _urllib_get, f"http://{scripted_url}/healthz")
    assert b'"yes"' in body  # the test still reads the body it was sent
    found = taken_violations(before)
    assert len(found) == 2 and all("ok" in violation for violation in found), found


def _urllib_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


@pytest.mark.gen_test(timeout=20)
async def test_urllib_still_raises_for_error_statuses_after_the_check(scripted_url):
    # A 404 from a path the document does not hold: not checked, and urllib's HTTPError as before.
    with pytest.raises(urllib.error.HTTPError) as raised:
        await asyncio.get_running_loop().run_in_executor(None, _urllib_get, f"http://{scripted_url}/nothing")
    assert raised.value.code == 404 and b"404" in raised.value.read()


class Refusing(tornado.web.RequestHandler):
    def get(self):
        self.set_status(403)
        self.set_header("Content-Type", "application/json")
        self.finish('{"type":"error","code":"forbidden","result":"no"}')


@pytest.mark.gen_test(timeout=20)
async def test_a_refused_handshake_is_checked_as_an_http_response(io_loop):
    port = free_port()
    server = HTTPServer(tornado.web.Application([(r"/ws", Refusing)]))
    server.listen(port, "127.0.0.1")
    before = len(wire.VIOLATIONS)
    try:
        with pytest.raises(Exception):
            await websocket_connect(f"ws://127.0.0.1:{port}/ws")
    finally:
        server.stop()
    found = taken_violations(before)
    assert len(found) == 1 and "forbidden" in found[0], found
