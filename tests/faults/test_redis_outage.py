"""Redis going away and coming back: the server stays up, says ``unavailable``, and resumes by itself.

Each test has a Redis of its own, with an append-only file, since it stops it.
"""

from __future__ import annotations

import logging
import time

import pytest

from tests.conftest import RedisServer, WorkerProcess
from tests.helpers import Client, async_wait_until

log = logging.getLogger(__name__)

pytestmark = pytest.mark.slow


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis", append_only=True).start()
    yield server
    server.stop()


async def _until_accepted(client: Client, number: int, timeout: float) -> dict:
    """Ask for number! until the answer is an acknowledgement, not ``unavailable``."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await client.ask({"type": "factorial", "number": number})
        if answer["type"] == "result":
            return answer
        assert answer["code"] == "unavailable", answer
        assert time.monotonic() < deadline, "the server did not resume after Redis came back"
        await async_wait_until(lambda: True)  # one loop turn between tries


async def _until_end(client: Client, timeout: float = 30) -> dict:
    while True:
        message = await client.receive(timeout)
        if message["type"] != "status":
            return message


@pytest.mark.gen_test(timeout=90)
async def test_requests_get_unavailable_at_once_while_redis_is_down_and_service_resumes(
        app, ws_url, redis_server, redis_url):
    worker = WorkerProcess(redis_url).start()
    try:
        client = await Client.connect(ws_url)
        _, done = await client.factorial(9)
        assert done["result"] == 362880

        redis_server.stop()
        asked = time.monotonic()
        answer = await client.ask({"type": "factorial", "number": 10, "ref": "down"})
        unavailable_after = time.monotonic() - asked
        assert answer == {"type": "error", "code": "unavailable", "result": answer["result"], "ref": "down"}
        lookup = await client.ask({"type": "result", "task_id": "0123456789abcdef0123456789abcdef"})
        assert lookup["code"] == "unavailable"
        assert unavailable_after < 1.0

        redis_server.start()
        back = time.monotonic()
        ack = await _until_accepted(client, 11, timeout=10)
        accepted_after = time.monotonic() - back
        done = await _until_end(client, 30)  # the worker reconnects by itself (RQ backs off up to a few s)
        answered_after = time.monotonic() - back
        assert done["type"] == "success" and done["task_id"] == ack["task_id"] and done["result"] == 39916800
        log.info("Redis down: unavailable after %.3f s; Redis back: accepted after %.2f s, answered after %.2f s",
                 unavailable_after, accepted_after, answered_after)
        # The same connection, the same server process: no restart anywhere.
        assert app.context.delivery is not None and client.connection.close_code is None
    finally:
        worker.stop()


@pytest.mark.gen_test(timeout=90)
async def test_jobs_queued_before_a_redis_restart_are_not_lost(app, ws_url, redis_server, redis_url, redis_client):
    client = await Client.connect(ws_url)
    acks = [await client.ask({"type": "factorial", "number": n}) for n in (12, 2000)]
    assert [a["status"] for a in acks] == ["queued", "queued"]  # no worker runs
    redis_server.stop()  # SIGTERM: Redis syncs its append-only file and exits
    redis_server.start()
    assert redis_client.llen("rq:queue:soft") == 1 and redis_client.llen("rq:queue:hard") == 1

    worker = WorkerProcess(redis_url).start()
    try:
        # The connection that asked is told, and so is a new one asking by task_id.
        ends = {}
        while len(ends) < 2:
            message = await _until_end(client)
            ends[message["task_id"]] = message
        assert ends[acks[0]["task_id"]]["result"] == 479001600
        assert ends[acks[1]["task_id"]]["digits"] == 5736
        later = await Client.connect(ws_url)
        again = await later.ask({"type": "result", "task_id": acks[1]["task_id"]})
        assert again["type"] == "success" and again["digits"] == 5736
    finally:
        worker.stop()
