"""The janitor on a real Redis: the states a dying worker leaves behind, made with RQ's own calls."""

from __future__ import annotations

import time

import pytest
from rq import Queue
from rq.executions import Execution
from rq.job import Job

from jobs import janitor, keys, lifecycle
from jobs.janitor import Janitor
from jobs.lifecycle import RunLost
from jobs.rq_schema import SERIALIZER
from jobs.states import FAILED, QUEUED
from jobs.store import JobStore
from settings import Settings
from tests.helpers import wait_until

DEAD = "dead-worker"
ALIVE = "live-worker"


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    """Trust and grace of a tenth of their real length, so each test takes well under a second."""
    monkeypatch.setattr(janitor, "TRUST_AFTER_S", 0.3)
    monkeypatch.setattr(janitor, "UNSTARTED_GRACE_S", 0.3)


@pytest.fixture
def store(redis_client, redis_url):
    # Room for every job in its RQ queue at once (no fair-share waiting), as
    # these tests take jobs from the queues the way workers do.
    return JobStore(redis_client, Settings(redis_url=redis_url, queued_jobs_per_worker=100))


def trusted_janitor(redis_client) -> Janitor:
    sweeper = Janitor(redis_client)
    # Until it trusts Redis, a round only measures the round trip.
    wait_until(lambda: sweeper.trusted or sweeper.run_once(), timeout=5, what="the janitor's trust")
    return sweeper


def run(sweeper: Janitor) -> janitor.Recovery:
    """One round, waiting for the lock of the previous round to lapse."""
    return wait_until(lambda: sweeper.run_once(), timeout=5, what="a janitor round")


def take(redis_client, queue_name: str) -> str:
    """What RQ's one-queue worker does when it takes a job: move it to the intermediate list."""
    queue = Queue(queue_name, connection=redis_client, serializer=SERIALIZER)
    return redis_client.lmove(queue.key, queue.intermediate_queue_key).decode()


def start(redis_client, job_id: str, worker: str, beating: bool = True, alive: bool = True) -> Execution:
    """What a worker and its horse write when a job starts (RQ's calls), for a worker that beats or not."""
    job = Job.fetch(job_id, connection=redis_client, serializer=SERIALIZER)
    with redis_client.pipeline() as pipe:
        execution = Execution.create(job, 60, pipeline=pipe, worker_name=worker)
        job.prepare_for_execution(worker, pipeline=pipe)
        if beating:
            pipe.sadd(keys.BEATING_WORKERS, worker)
        if alive:
            pipe.set(keys.worker_alive(worker), 1, px=60_000)
        pipe.execute()
    redis_client.lrem(Queue(job.origin, connection=redis_client).intermediate_queue_key, 0, job_id)
    # What the project's worker does next: claim the job for this run (jobs/lifecycle.py).
    assert lifecycle.of(redis_client).start(job_id, execution.id, [job_id], publish=False)
    return execution


def test_a_job_taken_but_never_started_goes_back_to_the_front_of_its_queue(store, redis_client, monkeypatch):
    monkeypatch.setattr(janitor, "UNSTARTED_GRACE_S", 1.5)  # longer than a round's lock
    first = store.submit([2000])[2000].task_id
    second = store.submit([2001])[2001].task_id
    sweeper = trusted_janitor(redis_client)
    assert take(redis_client, "hard") == first
    seen = time.monotonic()
    assert run(sweeper).requeued == []  # first sight: a live worker may be about to start it
    recovery = wait_until(lambda: (found := sweeper.run_once()) and found.requeued and found,
                          timeout=5, what="the requeue")
    assert recovery.requeued == [first]
    assert time.monotonic() - seen >= janitor.UNSTARTED_GRACE_S
    assert redis_client.lrange("rq:queue:hard", 0, -1) == [first.encode(), second.encode()]
    assert redis_client.llen("rq:queue:hard:intermediate") == 0
    assert store.states([first])[first].status == QUEUED


def test_a_started_job_whose_worker_stopped_beating_runs_again_and_nothing_is_published(store, redis_client):
    task_id = store.submit([3000])[3000].task_id
    take(redis_client, "hard")
    execution = start(redis_client, task_id, DEAD, alive=False)
    cursor = store.events_cursor()
    recovery = run(trusted_janitor(redis_client))
    assert recovery.requeued == [task_id] and recovery.failed == []
    assert store.states([task_id])[task_id].status == QUEUED
    assert redis_client.lrange("rq:queue:hard", 0, -1) == [task_id.encode()]  # at the front
    assert redis_client.zscore("rq:wip:hard", execution.composite_key) is None
    assert store.read_events(cursor, 0)[1] == []  # its clients hear nothing
    # Its worker had no job left: it is forgotten.
    assert not redis_client.sismember(keys.BEATING_WORKERS, DEAD)


def test_a_job_whose_every_run_is_lost_fails_once_after_the_last(store, redis_client):
    task_id = store.submit([3002])[3002].task_id
    sweeper = trusted_janitor(redis_client)
    cursor = store.events_cursor()
    attempts = Settings().job_max_attempts
    for attempt in range(attempts):
        take(redis_client, "hard")
        start(redis_client, task_id, f"{DEAD}-{attempt}", alive=False)
        recovery = run(sweeper)
        expected = ([task_id], []) if attempt < attempts - 1 else ([], [task_id])
        assert (recovery.requeued, recovery.failed) == expected
    state = store.states([task_id])[task_id]
    assert state.status == FAILED and state.error.code.value == "job_failed"
    assert state.error.text == (f"the job could not be computed: each of its {attempts} runs ended its worker ("
                                + "; ".join([janitor.WORKER_LOST] * attempts) + ")")
    _, events = store.read_events(cursor, 0)
    assert [(e.task_id, e.state, e.code) for e in events] == [(task_id, FAILED, "job_failed")]
    assert redis_client.llen("rq:queue:hard") == 0 and redis_client.ttl(f"rq:job:{task_id}") > 0


def test_a_job_registered_by_a_worker_that_died_before_its_horse_started_it_is_requeued(store, redis_client):
    task_id = store.submit([3001])[3001].task_id
    take(redis_client, "hard")
    job = Job.fetch(task_id, connection=redis_client, serializer=SERIALIZER)
    with redis_client.pipeline() as pipe:  # the worker's part only: the horse never ran
        Execution.create(job, 60, pipeline=pipe, worker_name=DEAD)
        pipe.sadd(keys.BEATING_WORKERS, DEAD)
        pipe.execute()
    recovery = run(trusted_janitor(redis_client))
    assert recovery.requeued == [task_id] and recovery.failed == []
    assert redis_client.lrange("rq:queue:hard", 0, -1) == [task_id.encode()]
    assert redis_client.zcard("rq:wip:hard") == 0 and redis_client.llen("rq:queue:hard:intermediate") == 0


def test_jobs_of_live_workers_and_of_workers_without_an_alive_key_are_left_alone(store, redis_client):
    live = store.submit([4000])[4000].task_id
    stock = store.submit([4001])[4001].task_id
    for task_id, worker, beating in ((live, ALIVE, True), (stock, "stock-rq-worker", False)):
        take(redis_client, "hard")
        start(redis_client, task_id, worker, beating=beating, alive=beating)
    recovery = run(trusted_janitor(redis_client))
    assert recovery.failed == [] and recovery.requeued == []
    assert redis_client.zcard("rq:wip:hard") == 2


def test_nothing_is_judged_before_the_janitor_has_reached_redis_for_a_whole_alive_ttl(store, redis_client):
    task_id = store.submit([5000])[5000].task_id
    take(redis_client, "hard")
    start(redis_client, task_id, DEAD, alive=False)
    sweeper = Janitor(redis_client)
    assert sweeper.run_once() is None and not sweeper.trusted
    assert store.states([task_id])[task_id].status == "started"


def test_a_run_claimed_as_lost_by_two_janitors_at_once_is_requeued_once(store, redis_client):
    task_id = store.submit([6000])[6000].task_id
    take(redis_client, "hard")
    execution = start(redis_client, task_id, DEAD, alive=False)
    runs = lifecycle.of(redis_client)
    outcomes = [runs.run_lost(task_id, execution.id, "hard", "lost", [task_id], 3, 60,
                              entry=execution.composite_key) for _ in range(2)]
    assert outcomes == [RunLost.REQUEUED, RunLost.NOT_OWNED]
    assert redis_client.lrange("rq:queue:hard", 0, -1) == [task_id.encode()]


def test_the_end_of_a_run_that_lost_its_job_changes_nothing(store, redis_client):
    task_id = store.submit([6001])[6001].task_id
    take(redis_client, "hard")
    lost = start(redis_client, task_id, DEAD, alive=False)
    runs = lifecycle.of(redis_client)
    assert runs.run_lost(task_id, lost.id, "hard", "lost", [task_id], 3, 60, entry=lost.composite_key)
    # The paused run resumes and ends: refused, whether the job waits or runs again.
    assert not runs.finish(task_id, lost.id, {task_id: b"late"}, 60)
    assert not runs.fail(task_id, lost.id, [task_id], "job_failed", "late", 60)
    take(redis_client, "hard")
    again = start(redis_client, task_id, ALIVE)
    assert not runs.finish(task_id, lost.id, {task_id: b"late"}, 60)
    assert store.states([task_id])[task_id].status == "started"
    assert runs.finish(task_id, again.id, {task_id: b"rerun"}, 60)
    assert store.states([task_id])[task_id].payload == b"rerun"
    assert not runs.fail(task_id, again.id, [task_id], "job_failed", "late", 60)  # settled stays settled
    assert store.states([task_id])[task_id].payload == b"rerun"
