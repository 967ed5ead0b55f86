"""REDIS_MIN_REPLICAS: a job is acknowledged only once a replica holds it."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from redis import Redis
from rq.job import Job

from jobs import keys
from jobs.gateway import JobGateway
from jobs.store import JobStore, NotReplicated
from protocol import ErrorCode, ProtocolError
from settings import Settings
from stack.redis import server_command
from tests.conftest import RedisServer
from tests.helpers import free_port, stop_process, wait_until


@pytest.fixture
def primary_and_replica(tmp_path):
    primary = RedisServer(tmp_path / "primary").start()
    port = free_port()
    (tmp_path / "replica").mkdir()
    replica = subprocess.Popen(server_command(port, tmp_path / "replica", append_only=False)
                               + ["--replicaof", "127.0.0.1", str(primary.port)], stdout=subprocess.DEVNULL)
    replica_client = Redis(port=port)
    try:
        wait_until(lambda: _linked(replica_client), timeout=15, what="the replica to sync")
        yield primary, replica, replica_client
    finally:
        stop_process(replica)
        primary.stop()


def _linked(client: Redis) -> bool:
    try:
        return client.info("replication").get("master_link_status") == "up"
    except Exception:
        return False


def test_a_submit_returns_once_the_replica_holds_the_job(primary_and_replica):
    primary, replica, replica_client = primary_and_replica
    store = JobStore(Redis.from_url(primary.url), Settings(redis_url=primary.url, redis_min_replicas=1))
    answers = store.submit([7, 5000])
    # WAIT returned: the replica holds the hard job and the soft one's index entry already.
    assert replica_client.exists(Job.key_for(answers[5000].task_id))
    assert replica_client.get(keys.by_number(7)) == answers[7].task_id.encode()


def test_with_no_replica_answering_a_submit_fails_as_an_outage_within_the_timeout(primary_and_replica):
    primary, replica, _ = primary_and_replica
    store = JobStore(Redis.from_url(primary.url),
                     Settings(redis_url=primary.url, redis_min_replicas=1, redis_replica_timeout_ms=300))
    replica.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(NotReplicated, match="0 of the 1 replicas"):
            store.submit([5001])
        assert 0.25 < time.monotonic() - started < 3
    finally:
        replica.send_signal(signal.SIGCONT)
    # Without the requirement the same store acknowledges at once.
    relaxed = JobStore(Redis.from_url(primary.url), Settings(redis_url=primary.url))
    assert relaxed.submit([5002])[5002].status == "queued"


@pytest.mark.gen_test(timeout=30)
async def test_a_submit_no_replica_confirmed_is_unavailable_at_the_gateway_and_no_bug(primary_and_replica, io_loop):
    # NotReplicated is no Redis error: it is an outage because OUTAGE_ERRORS lists it (jobs/outage.py).
    primary, replica, _ = primary_and_replica
    settings = Settings(redis_url=primary.url, redis_min_replicas=1, redis_replica_timeout_ms=300)
    bugs = []
    gateway = JobGateway(JobStore(Redis.from_url(primary.url), settings), on_internal_error=bugs.append)
    replica.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(ProtocolError) as failed:
            await gateway.request_submit(5003)
        assert failed.value.code == ErrorCode.UNAVAILABLE and bugs == [] and gateway.outage.down
    finally:
        replica.send_signal(signal.SIGCONT)
        gateway.close()
