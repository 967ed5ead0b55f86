"""Abandoned work stops: a job no one waits for any more is stopped ABANDON_GRACE_S later.

Real connections closed, a real worker, the grace measured by Redis's own
clock (a key's TTL), and the stop made by the servers' periodic sweep.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.helpers import Client, async_wait_until, child_pids

GRACE_S = 2
LONG = 3_000_000  # seconds of work for one worker


@pytest.fixture
def settings(make_settings):
    return make_settings(abandon_grace_s=GRACE_S, max_number=LONG, hard_timeout_s=60)


async def _lookup(ws_url: str, task_id: str) -> dict:
    """What a fresh connection hears of a task, without staying to wait for it."""
    client = await Client.connect(ws_url)
    try:
        return await client.ask({"type": "result", "task_id": task_id})
    finally:
        client.close()


def _state(redis_client, task_id: str) -> bytes | None:
    return redis_client.hget(f"rq:job:{task_id}", "factorial_state")


@pytest.mark.gen_test(timeout=60)
async def test_a_queued_job_whose_only_client_left_is_stopped_after_the_grace(app, ws_url, redis_client):
    client = await Client.connect(ws_url)
    ack = await client.ask({"type": "factorial", "number": 700_001})  # no worker: it waits
    client.close()
    left = time.monotonic()
    await async_wait_until(lambda: _state(redis_client, ack["task_id"]) == b"cancelled", timeout=GRACE_S + 10,
                           what="the abandoned job to be stopped")
    assert time.monotonic() - left >= GRACE_S - 0.2  # not before the grace (Redis's clock, ms precision)
    answer = await _lookup(ws_url, ack["task_id"])
    assert answer["type"] == "error" and answer["code"] == "cancelled", answer
    assert redis_client.zcard("rq:deferred:hard") == 0 and redis_client.llen("rq:queue:hard") == 0


@pytest.mark.gen_test(timeout=90)
async def test_a_running_job_whose_only_client_left_is_stopped_and_never_answered_as_run(
        app, ws_url, make_worker, redis_client):
    worker = make_worker()
    client = await Client.connect(ws_url)
    ack = await client.ask({"type": "factorial", "number": LONG})
    started = await client.receive(30)
    assert started["status"] == "started", started
    client.close()
    await async_wait_until(lambda: _state(redis_client, ack["task_id"]) == b"cancelled",
                           timeout=GRACE_S + 10, what="the abandoned running job to be stopped")
    # Its worker was told to stop it: the horse is gone, and the worker takes the next job.
    await async_wait_until(lambda: not child_pids(worker.process.pid), timeout=10, what="the horse to end")
    assert not redis_client.exists(f"factorial:payload:{ack['task_id']}")
    answer = await _lookup(ws_url, ack["task_id"])
    assert answer["code"] == "cancelled", answer
    other = await Client.connect(ws_url)
    _, done = await other.factorial(2000, timeout=20)
    while done["type"] == "status":
        done = await other.receive(20)
    assert done["type"] == "success"


@pytest.mark.gen_test(timeout=60)
async def test_a_client_back_within_the_grace_keeps_its_job(app, ws_url, redis_client):
    client = await Client.connect(ws_url)
    ack = await client.ask({"type": "factorial", "number": 700_002})
    client.close()
    back = await Client.connect(ws_url)  # a page reload, a reconnect after a network change
    assert (await back.ask({"type": "result", "task_id": ack["task_id"]}))["status"] == "queued"
    # Past twice the grace, and past sweeps that looked at it: still waiting.
    await asyncio.sleep(2 * GRACE_S + 1)  # a window in which nothing must happen: a duration, not a wait
    assert _state(redis_client, ack["task_id"]) in (b"pending", b"queued")
    assert not redis_client.sismember("factorial:abandon-candidates", ack["task_id"])


@pytest.mark.gen_test(timeout=60)
async def test_a_job_someone_else_waits_for_keeps_going(app, ws_url, http_server, base_url, redis_client):
    leaving, staying = await Client.connect(ws_url), await Client.connect(ws_url)
    ack = await leaving.ask({"type": "factorial", "number": 700_003})
    assert (await staying.ask({"type": "factorial", "number": 700_003}))["task_id"] == ack["task_id"]
    # And a job asked over HTTP: its client holds it until its DELETE, as no connection can.
    response = await AsyncHTTPClient().fetch(f"{base_url}/api/factorial", method="POST",
                                             body='{"number": 700_004}'.replace("_", ""), raise_error=False)
    held = await leaving.ask({"type": "factorial", "number": 700_004})
    assert response.code == 202
    leaving.close()
    await asyncio.sleep(2 * GRACE_S + 1)  # a window in which nothing must happen: a duration, not a wait
    assert _state(redis_client, ack["task_id"]) in (b"pending", b"queued")
    assert _state(redis_client, held["task_id"]) in (b"pending", b"queued")
