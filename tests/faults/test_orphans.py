"""A worker killed while it holds jobs it took off the queue: every acknowledged request still gets its answer.

The soft-only worker takes a job into RQ's intermediate list, registers it as
started, and runs it in its own process; killed at any of these moments, its
jobs are requeued (not started) or failed (started) by the janitor.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import pytest
from rq import Queue

from tests.helpers import Client, async_wait_until

log = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

CLIENTS = 50
REQUESTS_EACH = 40
RESTART_AFTER_S = 3.0


@pytest.fixture
def settings(make_settings):
    # The burst comes from 50 clients; here they share one address, so the per-client caps are lifted.
    return make_settings(client_max_in_flight=0, client_max_requests_per_s=0)


def _orphans(redis_client) -> int:
    """Jobs a dead soft worker left: taken into the intermediate list, or registered as started."""
    queue = Queue("soft", connection=redis_client)
    return redis_client.llen(queue.intermediate_queue_key) + redis_client.zcard(queue.started_job_registry.key)


@pytest.mark.gen_test(timeout=120)
async def test_a_soft_worker_killed_at_a_burst_loses_no_acknowledged_request(
        app, ws_url, redis_client, make_worker, tmp_path):
    # The Procfile's soft-only worker, alone, so the whole burst goes through it.
    soft = make_worker(queues=("soft",), log_path=tmp_path / "soft-worker.log")
    clients = [await Client.connect(ws_url) for _ in range(CLIENTS)]

    async def burst() -> None:
        for c, client in enumerate(clients):
            for i in range(REQUESTS_EACH):
                await client.send({"type": "factorial", "number": 1 + (c * REQUESTS_EACH + i) % 1000, "ref": i})

    sending = asyncio.ensure_future(burst())
    # Mid-burst, at an instant the worker holds a job it took off the queue.
    await async_wait_until(lambda: _orphans(redis_client) > 0, timeout=30, interval=0.001,
                           what="the soft worker to take a job")
    soft.process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    soft.process.wait()
    left = _orphans(redis_client)
    await sending

    async def answers_of(client: Client) -> tuple[dict, dict]:
        """Each acknowledged request's final answers, by task id, and the refused requests."""
        acked: dict[str, list[dict]] = {}
        refused, pending, seen = {}, set(), 0
        while seen < REQUESTS_EACH or pending:
            message = await client.receive(45)
            if message["type"] == "result" and "ref" in message:
                seen += 1
                acked.setdefault(message["task_id"], [])
                if message["status"] != "finished":
                    pending.add(message["task_id"])
            elif message["type"] == "status":
                continue
            elif message.get("task_id") in acked:
                acked[message["task_id"]].append(message)
                pending.discard(message["task_id"])
            else:
                seen += 1
                refused[message.get("ref")] = message
        return acked, refused

    readers = asyncio.gather(*(answers_of(client) for client in clients))
    await asyncio.sleep(RESTART_AFTER_S)  # the worker is down this long, as a supervisor would restart it
    make_worker(queues=("soft",), log_path=tmp_path / "soft-worker-2.log")
    results = await readers
    answered_after = time.monotonic() - killed

    outcomes: dict[str, int] = {}
    acknowledged = 0
    for acked, refused in results:
        assert all(m["code"] == "rate_limited" for m in refused.values()), refused
        for task_id, finals in acked.items():
            acknowledged += 1
            assert len(finals) <= 1, finals
            if finals:  # acknowledged as already finished: the acknowledgement was the answer
                assert finals[0]["type"] == "success" or finals[0]["code"] == "job_failed", finals[0]
                outcome = finals[0]["type"] if finals[0]["type"] == "success" else finals[0]["code"]
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
    log.info("soft worker SIGKILLed at a burst of %d requests (holding %d jobs), restarted %.0f s later: %d "
             "acknowledged, all answered %.1f s after the kill (%s)", CLIENTS * REQUESTS_EACH, left, RESTART_AFTER_S,
             acknowledged, answered_after, outcomes)
    assert left > 0, "the worker held no job when killed: this run tested nothing"
    assert acknowledged == CLIENTS * REQUESTS_EACH
    assert answered_after < 30

    # New requests succeed, and no second answer for an old request comes first.
    for client in clients[:5]:
        ack = await client.ask({"type": "factorial", "number": 4, "ref": "after"})
        assert ack["type"] == "result" and ack["ref"] == "after", ack
        if ack["status"] != "finished":
            done = await client.receive(30)
            assert done["type"] == "success" and done["result"] == 24 and done["ref"] == "after", done
