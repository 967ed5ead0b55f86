"""jobs/gateway.py on a real Redis: requests batched into one round trip, outages and bugs told apart."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis import Redis

from jobs.gateway import JobGateway
from jobs.states import MISSING, QUEUED
from jobs.store import JobStore
from protocol import ErrorCode, ProtocolError
from server import connect_redis
from settings import Settings
from tests.helpers import free_port, jobs_waiting

UNKNOWN = "0123456789abcdef0123456789abcdef"


def script_runs(redis: Redis) -> int:
    """Lua script runs Redis has counted since its statistics were reset: one per submit round trip."""
    stats = redis.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("eval", "evalsha"))


@pytest.fixture
def gateway(redis_url, io_loop):
    settings = Settings(redis_url=redis_url, soft_batch_size=50)
    gateway = JobGateway(JobStore(connect_redis(settings), settings))
    yield gateway
    gateway.close()


@pytest.mark.gen_test(timeout=30)
async def test_requests_made_in_one_loop_pass_go_to_redis_in_one_round_trip(gateway, redis_client):
    await gateway.request_submit(0)  # the script is sent to Redis once, before counting
    redis_client.config_resetstat()

    numbers = list(range(1, 201)) + list(range(2000, 2010))
    submits = [gateway.request_submit(n) for n in numbers]
    lookups = [gateway.request_lookup(UNKNOWN) for _ in range(20)]
    acks = await asyncio.gather(*submits)
    states = await asyncio.gather(*lookups)

    assert script_runs(redis_client) == 1
    assert [a.status for a in acks] == [QUEUED] * len(numbers) and len({a.task_id for a in acks}) == len(numbers)
    assert {s.status for s in states} == {MISSING}
    # 0!'s job, then 200 soft numbers in batches of 50; and 10 hard jobs.
    assert jobs_waiting(redis_client, "soft") == 1 + 4 and jobs_waiting(redis_client, "hard") == 10


@pytest.mark.gen_test(timeout=30)
async def test_an_unreachable_redis_is_unavailable_and_not_counted_as_a_bug(io_loop, caplog):
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    bugs = []
    gateway = JobGateway(JobStore(connect_redis(settings), settings), on_internal_error=bugs.append)
    try:
        with caplog.at_level(logging.WARNING, logger="jobs.gateway"):
            for request in (gateway.request_submit(5), gateway.request_lookup(UNKNOWN), gateway.request_submit(6)):
                with pytest.raises(ProtocolError) as failed:
                    await request
                assert failed.value.code == ErrorCode.UNAVAILABLE
        assert gateway.outage.down and bugs == []
        assert [r.getMessage().split(":")[0] for r in caplog.records if r.name == "jobs.gateway"] == [
            "Redis unreachable"]
    finally:
        gateway.close()


@pytest.mark.gen_test(timeout=30)
async def test_an_error_that_is_not_an_outage_fails_the_requests_and_is_counted(gateway, redis_client, caplog):
    # A key of the wrong type: Redis answers WRONGTYPE, a bug or a foreign writer, not an outage.
    redis_client.set("rq:queue:soft", "not a list")
    bugs = []
    gateway.on_internal_error = bugs.append
    with caplog.at_level(logging.ERROR, logger="jobs.gateway"):
        with pytest.raises(ProtocolError) as failed:
            await gateway.request_submit(5)
    assert failed.value.code == ErrorCode.JOB_FAILED and "internal error" in failed.value.text
    assert bugs == ["submit"] and not gateway.outage.down
    logged = [r for r in caplog.records if r.name == "jobs.gateway" and r.levelno == logging.ERROR]
    assert logged and logged[0].exc_info is not None  # with its traceback

    # The gateway goes on: the hard queue is intact.
    redis_client.delete("rq:queue:soft")
    assert (await gateway.request_submit(5000)).status == QUEUED
