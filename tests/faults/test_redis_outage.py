"""Redis going away and coming back: the server stays up, says ``unavailable``, and resumes by itself.

Each test has a Redis of its own, with an append-only file, since it stops it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import pytest

from tests.conftest import RedisServer
from tests.helpers import Client, async_wait_until, jobs_waiting

log = logging.getLogger(__name__)

pytestmark = pytest.mark.slow


# Busy for a few seconds (GMP, then its digits): still running when Redis goes away.
RUNNING = 3_000_000
OUTAGE_S = 5.0


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis", append_only=True).start()
    yield server
    if server.process and server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)  # in case the test paused it
    server.stop()


@pytest.fixture
def settings(make_settings):
    # The clients here ride the outage out on their connections: no 1013 handover (handlers/redis_watch.py).
    return make_settings(max_number=RUNNING, redis_lost_close_s=60)


@pytest.fixture
def workers(make_worker, tmp_path):
    """A worker of both queues (it will be watching a horse) and an idle one of soft only."""
    return [make_worker(log_path=tmp_path / "worker.log"),
            make_worker(queues=("soft",), log_path=tmp_path / "soft-worker.log")]


async def _until_accepted(client: Client, number: int, timeout: float) -> dict:
    """Ask for number! until the answer is an acknowledgement, not ``unavailable``."""

    async def accepted() -> dict | None:
        answer = await client.ask({"type": "factorial", "number": number})
        assert answer["type"] == "result" or answer["code"] == "unavailable", answer
        return answer if answer["type"] == "result" else None

    # interval=0: one loop turn between tries, each a round trip already.
    return await async_wait_until(accepted, timeout=timeout, interval=0, what="the server to resume after Redis")


async def _until_end(client: Client, timeout: float = 30) -> dict:
    while True:
        message = await client.receive(timeout)
        if message["type"] != "status":
            return message


@pytest.mark.gen_test(timeout=90)
async def test_requests_get_unavailable_at_once_while_redis_is_down_and_service_resumes(
        app, ws_url, redis_server, make_worker):
    make_worker()
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
    # The contract: within REDIS_UNAVAILABLE_S (1 s); a refused connection fails at once, so the slack is wide.
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


@pytest.mark.gen_test(timeout=90)
async def test_jobs_queued_before_a_redis_restart_are_not_lost(app, ws_url, redis_server, make_worker,
                                                                redis_client):
    client = await Client.connect(ws_url)
    acks = [await client.ask({"type": "factorial", "number": n}) for n in (12, 2000)]
    assert [a["status"] for a in acks] == ["queued", "queued"]  # no worker runs
    redis_server.stop()  # SIGTERM: Redis syncs its append-only file and exits
    redis_server.start()
    assert jobs_waiting(redis_client, "soft") == 1 and jobs_waiting(redis_client, "hard") == 1

    make_worker()
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


async def _finals(waits: dict[Client, set[str]], timeout: float) -> dict[str, list[dict]]:
    """The final answers (success or error) each client gets for the task ids it waits for, within ``timeout`` s."""
    finals: dict[str, list[dict]] = {}
    deadline = time.monotonic() + timeout

    async def read(client: Client, task_ids: set[str]) -> None:
        while not task_ids <= finals.keys():
            message = await client.receive(max(deadline - time.monotonic(), 0.01))
            if message["type"] != "status":
                finals.setdefault(message.get("task_id"), []).append(message)

    await asyncio.gather(*(read(client, task_ids) for client, task_ids in waits.items()))
    return finals


async def _no_more_messages(client: Client) -> None:
    """A fresh request's acknowledgement comes next: no second answer for an old job is in between."""
    ack = await client.ask({"type": "factorial", "number": 7, "ref": "after"})
    assert ack["type"] == "result" and ack["ref"] == "after", ack
    done = await client.receive(30)
    assert done["type"] == "success" and done["result"] == 5040 and done["ref"] == "after", done


@pytest.mark.gen_test(timeout=150)
@pytest.mark.parametrize("fault", ["stop", "kill", "pause"])
async def test_workers_ride_out_redis_going_away_and_every_acknowledged_request_is_answered(
        fault, app, ws_url, redis_server, redis_client, workers):
    if fault == "kill":
        # SIGKILL loses the writes of the last second otherwise (appendfsync everysec).
        redis_client.config_set("appendfsync", "always")
    pids = [worker.process.pid for worker in workers]
    running, waiting = await Client.connect(ws_url), await Client.connect(ws_url)
    first = await running.ask({"type": "factorial", "number": RUNNING})
    started = await running.receive(20)
    assert started["type"] == "status" and started["status"] == "started", started
    queued = [await waiting.ask({"type": "factorial", "number": n}) for n in range(1001, 1020)]
    assert all(ack["type"] == "result" and ack["queue"] == "hard" for ack in queued)
    waits = {running: {first["task_id"]}, waiting: {ack["task_id"] for ack in queued}}
    task_ids = waits[running] | waits[waiting]
    assert len(task_ids) == 20

    if fault == "pause":
        redis_server.process.send_signal(signal.SIGSTOP)
        await asyncio.sleep(OUTAGE_S)  # the outage's length, not a wait for a condition
        redis_server.process.send_signal(signal.SIGCONT)
    else:
        if fault == "stop":
            redis_server.stop()  # SIGTERM: Redis writes its append-only file and exits
        else:
            redis_server.process.kill()
            redis_server.process.wait()
        await asyncio.sleep(OUTAGE_S)  # the outage's length, as above
        redis_server.start()
    back = time.monotonic()

    finals = await _finals(waits, timeout=60)
    answered_after = time.monotonic() - back
    log.info("Redis %s for %.0f s with 1 hard job running and 19 queued: all 20 answered %.2f s after it returned",
             fault, OUTAGE_S, answered_after)
    assert {task_id: len(answers) for task_id, answers in finals.items()} == {task_id: 1 for task_id in task_ids}
    assert all(answers[0]["type"] == "success" for answers in finals.values()), finals
    assert finals[first["task_id"]][0]["digits"] == 18_128_484  # the digits of 3000000!
    # The same worker processes, never restarted.
    assert [worker.process.poll() for worker in workers] == [None, None]
    assert [worker.process.pid for worker in workers] == pids
    for client in (running, waiting):
        await _no_more_messages(client)
