"""LaneWorker's cuts of RQ's per-job round trips, and what they must not break.

RQ's loop beats three times per soft job (three round trips each), writes the
idle state twice and checks for `rq suspend` every job; LaneWorker sends a
beat only when one is due, writes a state only when it changes, and looks for
suspension once a second (jobs/worker.py). Counted here with a real Redis
and a redis-py connection class that counts what it sends.
"""

from __future__ import annotations

import time

from redis import ConnectionPool, Redis
from redis.connection import Connection
from rq import Queue
from rq.defaults import DEFAULT_WORKER_TTL
from rq.suspension import resume, suspend
from rq.worker import SimpleWorker

from jobs.rq_schema import SERIALIZER
from jobs.worker import LaneWorker
from tests.conftest import wait_until

JOBS = 40


class CountingConnection(Connection):
    sent = 0

    def send_packed_command(self, command, check_health=True):
        CountingConnection.sent += 1
        return super().send_packed_command(command, check_health)


def round_trips_per_job(worker_class, redis_url: str, redis_client: Redis) -> float:
    redis_client.flushdb()
    queue = Queue("soft", connection=redis_client, serializer=SERIALIZER)
    for n in range(JOBS):
        queue.enqueue("jobs.factorial.factorial", 5 + n)
    counted = Redis(connection_pool=ConnectionPool.from_url(redis_url, connection_class=CountingConnection))
    CountingConnection.sent = 0
    worker = worker_class([Queue("soft", connection=counted, serializer=SERIALIZER)], connection=counted,
                          serializer=SERIALIZER)
    worker.work(burst=True, logging_level="WARNING")
    assert queue.finished_job_registry.count == JOBS
    return CountingConnection.sent / JOBS


def test_lane_worker_makes_at_most_six_tenths_of_rqs_round_trips_per_soft_job(redis_url, redis_client):
    stock = round_trips_per_job(SimpleWorker, redis_url, redis_client)
    lane = round_trips_per_job(LaneWorker, redis_url, redis_client)
    # Seen: 21.9 for RQ 3.0's SimpleWorker, 10.9 for LaneWorker.
    assert lane <= 0.6 * stock, (lane, stock)


def test_after_a_soft_job_the_idle_worker_key_lives_for_the_full_worker_ttl(make_worker, redis_client):
    # A soft job's own beat gives the worker key the job's TTL (its timeout +
    # 60 s); the beat after it must still restore the full one before the
    # worker waits minutes for its next job.
    make_worker(queues=("soft",))
    key = next(iter(redis_client.smembers("rq:workers")))
    job = Queue("soft", connection=redis_client, serializer=SERIALIZER).enqueue("jobs.factorial.factorial", 5)
    wait_until(lambda: job.get_status(refresh=True) == "finished", timeout=10, what="the job to finish")
    wait_until(lambda: redis_client.hget(key, "state") == b"idle", timeout=10, what="the worker to be idle")
    assert redis_client.ttl(key) > DEFAULT_WORKER_TTL


def test_a_suspended_worker_takes_no_job_until_resumed(make_worker, redis_client):
    make_worker(queues=("soft",))
    queue = Queue("soft", connection=redis_client, serializer=SERIALIZER)
    first = queue.enqueue("jobs.factorial.factorial", 5)
    wait_until(lambda: first.get_status(refresh=True) == "finished", timeout=10, what="the first job")
    time.sleep(1.2)  # a duration: past the worker's once-a-second look, as a worker idle for a while is
    suspend(redis_client)
    # A worker already waiting for a job takes the next one, as RQ's own
    # does; it looks for suspension before it waits again.
    second = queue.enqueue("jobs.factorial.factorial", 6)
    wait_until(lambda: second.get_status(refresh=True) == "finished", timeout=10, what="the second job")
    third = queue.enqueue("jobs.factorial.factorial", 7)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert third.get_status(refresh=True) == "queued"
        time.sleep(0.1)  # polling through a 3 s window in which nothing must happen
    resume(redis_client)
    wait_until(lambda: third.get_status(refresh=True) == "finished", timeout=15, what="the job after resume")
