"""Redis at its memory cap (stack/redis.py: ``maxmemory``, ``volatile-lru``), on a real redis-server.

Full of keys without a TTL (queued work), Redis refuses writes: clients get
``busy`` over WebSocket and HTTP, and the server keeps serving. Full of keys
with a TTL, Redis evicts them, results among them: an evicted result reads as
expired (``unknown_task_id``), and queued work stays.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from redis import Redis
from redis.exceptions import OutOfMemoryError

from jobs import keys
from stack.redis import EVICTION_POLICY
from tests.conftest import RedisServer
from tests.helpers import Client, async_wait_until

pytestmark = pytest.mark.slow

# Room above what Redis holds when the test caps it: a few hundred fill values.
HEADROOM_BYTES = 2 * 1024 * 1024
FILL_VALUE = b"x" * 10_000
MAX_FILL_KEYS = 20_000  # 200 MB of writes at most, whatever Redis does
HARD = 2000  # 5736 digits; with no worker on "hard" its job stays queued


@pytest.fixture
def redis_server(tmp_path):
    """A Redis of this test's own: the test lowers its memory cap."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def cap_memory(redis: Redis) -> None:
    """Set maxmemory just above what Redis holds now."""
    assert redis.config_get("maxmemory-policy")["maxmemory-policy"] == EVICTION_POLICY
    redis.config_set("maxmemory", redis.info("memory")["used_memory"] + HEADROOM_BYTES)


def fill_until_full(redis: Redis) -> int:
    """Write keys without a TTL until Redis refuses one for its memory; return how many went in.

    Then hold it full: the cap goes 1 MB below what Redis holds, so that
    buffers coming and going cannot let a write through now and then.
    """
    for i in range(MAX_FILL_KEYS):
        try:
            redis.set(f"test:fill:{i}", FILL_VALUE)
        except OutOfMemoryError:
            redis.config_set("maxmemory", redis.info("memory")["used_memory"] - 1024 * 1024)
            return i
    raise AssertionError(f"Redis took {MAX_FILL_KEYS} fill keys without refusing one")


async def post(http_client, base_url, number: int):
    return await http_client.fetch(base_url + "/api/factorial", method="POST", raise_error=False,
                                   body=json.dumps({"number": number}))


async def get_task(http_client, base_url, task_id: str):
    return await http_client.fetch(base_url + f"/api/tasks/{task_id}", raise_error=False)


async def internal_errors(http_client, base_url) -> list[str]:
    text = (await http_client.fetch(base_url + "/metrics")).body.decode()
    return [line for line in text.splitlines()
            if line.startswith("factorial_internal_errors_total") and not line.endswith(" 0.0")]


@pytest.mark.gen_test(timeout=90)
async def test_a_full_redis_answers_busy_over_websocket_and_http_and_the_server_serves_on(
        app, ws_url, http_client, base_url, worker, redis_client, caplog):
    caplog.set_level(logging.WARNING, logger="jobs.gateway")
    client = await Client.connect(ws_url)
    _, done = await client.factorial(5)
    assert done["result"] == 120
    five = done["task_id"]

    cap_memory(redis_client)
    filled = fill_until_full(redis_client)
    # Before refusing, Redis evicted every key it could: those with a TTL.
    assert redis_client.info("stats")["evicted_keys"] > 0
    assert not redis_client.exists(keys.payload(five))

    answer = await client.ask({"type": "factorial", "number": 7, "ref": 1})
    assert (answer["type"], answer.get("code"), answer["ref"]) == ("error", "busy", 1), answer
    response = await post(http_client, base_url, 8)
    assert response.code == 503 and json.loads(response.body)["code"] == "busy", response.body
    # Reads still work: lookups are answered (the evicted result as expired),
    # on this connection, on a new one, and over HTTP.
    answer = await client.ask({"type": "result", "task_id": five})
    assert (answer["type"], answer.get("code")) == ("error", "unknown_task_id"), answer
    other = await Client.connect(ws_url)
    answer = await other.ask({"type": "result", "task_id": five})
    assert answer.get("code") == "unknown_task_id", answer
    response = await get_task(http_client, base_url, five)
    assert response.code == 404 and json.loads(response.body)["code"] == "unknown_task_id"
    assert await internal_errors(http_client, base_url) == []

    # Memory frees up: the same server takes and answers requests again.
    redis_client.delete(*(f"test:fill:{i}" for i in range(filled)))
    ack, done = await client.factorial(9, timeout=30)
    assert ack["type"] == "result" and done["result"] == 362880, (ack, done)
    response = await post(http_client, base_url, 10)
    assert response.code == 202, response.body
    assert await internal_errors(http_client, base_url) == []
    refusals = [r.getMessage() for r in caplog.records if "maxmemory" in r.getMessage()]
    assert refusals and refusals[0].startswith("Redis refuses writes at its maxmemory"), refusals
    assert len(refusals) <= 4, refusals  # logged once (and at doubling intervals), not per request
    client.close()
    other.close()


@pytest.mark.gen_test(timeout=90)
async def test_an_evicted_result_reads_as_expired_and_queued_work_is_never_evicted(
        app, ws_url, http_client, base_url, make_worker, redis_client):
    make_worker(queues=("soft",))
    client = await Client.connect(ws_url)
    _, done = await client.factorial(5)
    five = done["task_id"]
    queued = json.loads((await post(http_client, base_url, HARD)).body)
    assert queued["status"] == "queued", queued
    hard_job = f"rq:job:{queued['task_id']}"
    assert redis_client.ttl(hard_job) == -1  # queued work: no TTL

    cap_memory(redis_client)
    for i in range(MAX_FILL_KEYS):
        if not redis_client.exists(keys.payload(five)):
            break
        redis_client.set(f"test:volatile:{i}", FILL_VALUE, ex=3600)
    else:
        raise AssertionError("the result was never evicted")
    assert redis_client.info("stats")["evicted_keys"] > 0

    answer = await client.ask({"type": "result", "task_id": five})
    assert (answer["type"], answer.get("code"), answer["task_id"]) == ("error", "unknown_task_id", five), answer
    response = await get_task(http_client, base_url, five)
    assert response.code == 404 and json.loads(response.body)["code"] == "unknown_task_id"
    # Asked again, the number is computed again.
    _, again = await client.factorial(5)
    assert again["result"] == 120

    # The queued hard job kept its hash and its place, and runs once a worker comes.
    assert redis_client.hget(hard_job, "status") == b"queued"
    make_worker(queues=("hard",))
    deadline = time.monotonic() + 30
    answer = await client.ask({"type": "result", "task_id": queued["task_id"]})
    while answer["type"] == "status" and time.monotonic() < deadline:
        answer = await client.receive(timeout=max(deadline - time.monotonic(), 0.1))
    assert answer["type"] == "success" and answer["digits"] == 5736, answer
    client.close()


@pytest.mark.gen_test(timeout=90)
async def test_a_queued_soft_batch_survives_eviction(app, ws_url, make_worker, redis_client):
    client = await Client.connect(ws_url)
    numbers = list(range(300, 310))
    for number in numbers:  # no worker yet: one batch job, queued
        await client.send({"type": "factorial", "number": number})
    acks = [await client.receive() for _ in numbers]
    assert {ack["status"] for ack in acks} == {"queued"}, acks
    batch_keys = [key for key in redis_client.scan_iter(match="factorial:batch:*")]
    assert batch_keys
    # Older (in Redis's LRU clock, which ticks once a second) than every fill key.
    await async_wait_until(lambda: redis_client.object("idletime", batch_keys[0]) >= 2, timeout=10,
                           what="the batch's keys to be idle for 2 s")
    cap_memory(redis_client)
    for i in range(3000):  # 30 MB of results' worth through a 2 MB room
        redis_client.set(f"test:volatile:{i}", FILL_VALUE, ex=3600)
    assert redis_client.info("stats")["evicted_keys"] > 0
    redis_client.config_set("maxmemory", 0)

    make_worker(queues=("soft",))
    try:
        ends = {}
        deadline = time.monotonic() + 20
        while len(ends) < len(numbers) and time.monotonic() < deadline:
            for ack in acks:
                if ack["task_id"] not in ends:
                    answer = await client.ask({"type": "result", "task_id": ack["task_id"]})
                    if answer["type"] in ("success", "error"):  # the answer, or a push for another task
                        ends[answer["task_id"]] = answer.get("code", "success")
            await asyncio.sleep(0)  # one loop turn between rounds; the loop is bounded by its deadline
        assert set(ends.values()) == {"success"} and len(ends) == len(numbers), ends
    finally:
        client.close()


@pytest.mark.gen_test(timeout=60)
async def test_an_idle_worker_of_two_queues_waits_out_a_full_redis_and_serves_on(app, ws_url, make_worker,
                                                                                 redis_client):
    # On two queues, the idle worker moves jobs with a script every 0.1 s, which a
    # Redis at its maxmemory refuses even when there is nothing to move.
    worker = make_worker(queues=("soft", "hard"))
    client = await Client.connect(ws_url)
    _, done = await client.factorial(6)
    assert done["result"] == 720
    cap_memory(redis_client)
    filled = fill_until_full(redis_client)
    await asyncio.sleep(2)  # a duration, not a wait: the worker must outlast 2 s of a full Redis
    assert worker.process.poll() is None, "the worker quit on a full Redis"
    redis_client.delete(*(f"test:fill:{i}" for i in range(filled)))
    _, done = await client.factorial(2001, timeout=30)
    while done["type"] == "status":
        done = await client.receive(30)
    assert done["type"] == "success" and worker.process.poll() is None
