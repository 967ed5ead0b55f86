"""The protocol's cancel: stop waiting for a job, and stop the job when no one else waits for it."""

from __future__ import annotations

import asyncio

import pytest
from redis import Redis

from jobs.factorial import factorial_digits
from tests.helpers import Client, async_wait_until, jobs_waiting

UNKNOWN = "0123456789abcdef0123456789abcdef"


async def _nothing_more(client: Client, seconds: float = 1.0) -> None:
    with pytest.raises(asyncio.TimeoutError):
        message = await client.receive(seconds)
        raise AssertionError(f"got {message} after cancelled")


@pytest.mark.gen_test(timeout=60)
async def test_cancelling_a_queued_job_stops_it_and_a_new_request_gets_a_new_job(ws_url, make_worker, redis_client):
    client = await Client.connect(ws_url)
    ack = await client.ask({"type": "factorial", "number": 40_000})
    task_id = ack["task_id"]
    answer = await client.ask({"type": "cancel", "task_id": task_id, "ref": 7})
    assert answer == {"type": "cancelled", "task_id": task_id, "job": "stopped", "ref": 7}
    assert jobs_waiting(redis_client, "hard") == 0
    lookup = await client.ask({"type": "result", "task_id": task_id})
    assert lookup["type"] == "error" and lookup["code"] == "cancelled" and lookup["task_id"] == task_id
    again = await client.ask({"type": "cancel", "task_id": task_id})
    assert again["job"] == "ended"  # cancelling twice is harmless

    fresh = await client.ask({"type": "factorial", "number": 40_000})
    assert fresh["task_id"] != task_id
    make_worker()
    done = await client.receive(30)
    while done["type"] == "status":
        done = await client.receive(30)
    assert done["task_id"] == fresh["task_id"] and done["result"] == factorial_digits(40_000)


@pytest.mark.gen_test(timeout=60)
async def test_a_job_another_connection_waits_for_continues_and_is_delivered_to_it(ws_url, make_worker):
    canceller, waiter = await Client.connect(ws_url), await Client.connect(ws_url)
    task_id = (await canceller.ask({"type": "factorial", "number": 41_000}))["task_id"]
    assert (await waiter.ask({"type": "factorial", "number": 41_000}))["task_id"] == task_id
    answer = await canceller.ask({"type": "cancel", "task_id": task_id})
    assert answer["job"] == "continues"
    make_worker()
    done = await waiter.receive(30)
    while done["type"] == "status":
        done = await waiter.receive(30)
    assert done["type"] == "success" and done["task_id"] == task_id
    await _nothing_more(canceller)


@pytest.mark.gen_test(timeout=90)
async def test_a_waiter_on_another_server_keeps_the_job_going(ws_url, redis_url, make_server):
    other = make_server()
    here, there = await Client.connect(ws_url), await Client.connect(other.ws_url)
    task_id = (await here.ask({"type": "factorial", "number": 42_000}))["task_id"]
    assert (await there.ask({"type": "result", "task_id": task_id}))["status"] == "queued"
    # The other server shares its waits within about a second.
    redis = Redis.from_url(redis_url)
    # Both servers' waits hold it (this server's own counts as one of the two).
    await async_wait_until(lambda: sum(bool(redis.sismember(k, task_id)) for k in redis.keys("factorial:waits:*")) >= 2,
                           timeout=10, what="the other server's wait in Redis")
    assert (await here.ask({"type": "cancel", "task_id": task_id}))["job"] == "continues"
    # Once it is gone, no one waits: a cancel stops the job.
    there.close()
    other.stop()
    second = await Client.connect(ws_url)
    assert (await second.ask({"type": "result", "task_id": task_id}))["status"] == "queued"
    answer = await async_wait_until_cancelled(second, task_id)
    assert answer["job"] == "stopped"


async def async_wait_until_cancelled(client: Client, task_id: str) -> dict:
    """Cancel until the stopped server's waits expire (WAITS_TTL_S is 5 s)."""

    async def cancelled() -> dict | None:
        answer = await client.ask({"type": "cancel", "task_id": task_id})
        if answer["job"] != "continues":
            return answer
        await client.ask({"type": "result", "task_id": task_id})  # wait for it again
        return None

    return await async_wait_until(cancelled, timeout=15, interval=0.5, what="the stopped server's waits to expire")


@pytest.mark.gen_test(timeout=90)
async def test_cancelling_a_running_job_tells_its_worker_to_stop_it(ws_url, make_worker, redis_client):
    make_worker()
    client = await Client.connect(ws_url)
    task_id = (await client.ask({"type": "factorial", "number": 1_000_000}))["task_id"]
    started = await client.receive(30)
    assert started == {"type": "status", "task_id": task_id, "status": "started"}
    answer = await client.ask({"type": "cancel", "task_id": task_id})
    assert answer["job"] == "stopped"
    await async_wait_until(lambda: redis_client.hget(f"rq:job:{task_id}", "status") in (b"stopped", b"failed"),
                           timeout=20, what="the worker to stop the job")
    assert not redis_client.exists(f"factorial:payload:{task_id}")
    await _nothing_more(client)
    lookup = await client.ask({"type": "result", "task_id": task_id})
    assert lookup["code"] == "cancelled"
    # The worker serves the next job.
    _, done = await client.factorial(10)
    assert done["result"] == 3628800


@pytest.mark.gen_test(timeout=30)
async def test_bad_and_unknown_cancels_get_errors(ws_url, worker):
    client = await Client.connect(ws_url)
    assert (await client.ask({"type": "cancel"}))["code"] == "invalid_task_id"
    assert (await client.ask({"type": "cancel", "task_id": UNKNOWN}))["code"] == "unknown_task_id"
    ack, _ = await client.factorial(9)
    assert (await client.ask({"type": "cancel", "task_id": ack["task_id"]}))["job"] == "ended"


@pytest.mark.gen_test(timeout=30)
async def test_delete_over_http_cancels_a_task(http_client, base_url, redis_client):
    import json

    posted = await http_client.fetch(f"{base_url}/api/factorial", method="POST", body=json.dumps({"number": 43_000}))
    task_id = json.loads(posted.body)["task_id"]
    deleted = await http_client.fetch(f"{base_url}/api/tasks/{task_id}", method="DELETE")
    assert deleted.code == 200 and json.loads(deleted.body) == {"type": "cancelled", "task_id": task_id,
                                                                "job": "stopped"}
    looked_up = await http_client.fetch(f"{base_url}/api/tasks/{task_id}", raise_error=False)
    assert json.loads(looked_up.body)["code"] == "cancelled"
    unknown = await http_client.fetch(f"{base_url}/api/tasks/{UNKNOWN}", method="DELETE", raise_error=False)
    assert unknown.code == 404 and json.loads(unknown.body)["code"] == "unknown_task_id"


@pytest.mark.parametrize("settings", [{"cancelled_ttl_s": 2}], indirect=True)
@pytest.mark.gen_test(timeout=60)
async def test_a_stopped_job_reads_as_cancelled_for_cancelled_ttl_s_then_is_gone_from_redis(ws_url, redis_client,
                                                                                          settings):
    # A client can stop a job with every two requests: what each stop leaves in Redis lasts
    # CANCELLED_TTL_S, not the hour of FAILURE_TTL_S.
    assert settings.failure_ttl_s >= 3600
    client = await Client.connect(ws_url)
    task_id = (await client.ask({"type": "factorial", "number": 40_001}))["task_id"]
    assert (await client.ask({"type": "cancel", "task_id": task_id}))["job"] == "stopped"
    left = [key for key in redis_client.scan_iter(match=f"*{task_id}*")]
    assert left and all(0 < redis_client.ttl(key) <= 2 for key in left), {k: redis_client.ttl(k) for k in left}
    assert (await client.ask({"type": "result", "task_id": task_id}))["code"] == "cancelled"

    async def gone() -> bool:
        return (await client.ask({"type": "result", "task_id": task_id}))["code"] == "unknown_task_id"

    await async_wait_until(gone, timeout=10, what="the stopped job to expire")
    assert not list(redis_client.scan_iter(match=f"*{task_id}*"))
    client.close()
