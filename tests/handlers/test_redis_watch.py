"""A server whose Redis falls silent says so fast, and hands its WebSockets over (handlers/redis_watch.py).

Redis is paused with SIGSTOP: it accepts connections and answers nothing,
as a cut-off host does, so only the watch's own budget ends the waits.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from tornado.httpclient import AsyncHTTPClient

from handlers.redis_watch import TRY_AGAIN_LATER
from tests.conftest import RedisServer
from tests.helpers import Client, async_wait_until

pytestmark = pytest.mark.slow

UNAVAILABLE_S = 1.0
LOST_CLOSE_S = 3.0


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    if server.process and server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)
    server.stop()


@pytest.fixture
def settings(make_settings):
    return make_settings(redis_unavailable_s=UNAVAILABLE_S, redis_lost_close_s=LOST_CLOSE_S)


async def _healthz(base_url: str) -> tuple[int, dict, float]:
    began = time.monotonic()
    response = await AsyncHTTPClient().fetch(base_url + "/healthz", raise_error=False, request_timeout=10)
    return response.code, json.loads(response.body), time.monotonic() - began


@pytest.mark.gen_test(timeout=60)
async def test_a_silent_redis_gets_unavailable_within_the_budget_then_1013_and_a_fast_healthz(
        app, ws_url, base_url, redis_server, worker):
    client = await Client.connect(ws_url)
    ack = await client.ask({"type": "factorial", "number": 3, "ref": "before"})
    assert ack["type"] == "result", ack
    code, health, _ = await _healthz(base_url)
    assert code == 200 and health["redis"] is True

    redis_server.process.send_signal(signal.SIGSTOP)
    paused = time.monotonic()
    answer = await client.ask({"type": "factorial", "number": 4, "ref": "paused"}, timeout=10)
    unavailable_after = time.monotonic() - paused
    # Ends of earlier jobs may come first; the refusal is the answer to "paused".
    while answer.get("ref") != "paused":
        answer = await client.receive(10)
    assert answer["type"] == "error" and answer["code"] == "unavailable", answer
    assert unavailable_after <= UNAVAILABLE_S + 0.5, unavailable_after  # the budget, and scheduling slack

    code, health, took = await _healthz(base_url)
    # The contract is 0.8 s whatever Redis does; 0.2 s of slack for a loaded machine.
    assert code == 503 and health["redis"] is False and took < 1.0, (code, health, took)
    # Silent this long already: the next request is refused at once.
    asked = time.monotonic()
    answer = await client.ask({"type": "result", "task_id": ack["task_id"], "ref": "again"}, timeout=10)
    # "At once": a round trip, not the 1 s budget again; half of it is slack for a loaded machine.
    assert answer["code"] == "unavailable" and time.monotonic() - asked < UNAVAILABLE_S / 2, answer

    closed = await async_wait_until(lambda: client.connection.close_code, timeout=LOST_CLOSE_S + 3,
                                    what="the WebSocket to close")
    closed_after = time.monotonic() - paused
    assert closed == TRY_AGAIN_LATER
    assert LOST_CLOSE_S - 0.3 <= closed_after <= LOST_CLOSE_S + 1.0, closed_after

    redis_server.process.send_signal(signal.SIGCONT)
    back = await Client.connect(ws_url)

    async def looked_up() -> dict | None:
        answer = await back.ask({"type": "result", "task_id": ack["task_id"]}, timeout=10)
        return None if answer["type"] == "error" and answer["code"] == "unavailable" else answer

    # The watch's next PING clears it; each try is a round trip, so no pause between them.
    answer = await async_wait_until(looked_up, timeout=30, interval=0, what="the server to see Redis back")
    assert answer["type"] in ("success", "status") and answer["task_id"] == ack["task_id"], answer
    code, health, _ = await _healthz(base_url)
    assert code == 200, health
    print(f"\nRedis paused: unavailable after {unavailable_after:.2f} s, /healthz 503 in {took:.3f} s, "
          f"WebSocket closed with {closed} after {closed_after:.2f} s")


@pytest.mark.gen_test(timeout=60)
async def test_a_connection_opened_after_the_loss_gets_a_short_grace(app, ws_url, redis_server):
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        early = await Client.connect(ws_url)
        await async_wait_until(lambda: early.connection.close_code, timeout=LOST_CLOSE_S + 3,
                               what="the first close")
        opened = time.monotonic()
        late = await Client.connect(ws_url)
        # Not closed at once (a client with nowhere else to go would reconnect in a loop), nor held
        # for long (a balancer may send it back here before it takes this server out).
        closed = await async_wait_until(lambda: late.connection.close_code, timeout=LOST_CLOSE_S + 3,
                                        what="the second close")
        assert closed == TRY_AGAIN_LATER
        assert UNAVAILABLE_S - 0.3 <= time.monotonic() - opened <= UNAVAILABLE_S + 1.0
    finally:
        redis_server.process.send_signal(signal.SIGCONT)  # before the fixtures flush it
