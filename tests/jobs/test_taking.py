"""A job is always in some list: its queue, a LaneWorker's taken list, or the started registry.

LaneWorker takes jobs with one Lua step over its queues (or a BLMOVE on its
first queue) into a list of its own, and registering the run takes the job
out of it in the same transaction (jobs/worker.py). The janitor puts back
what a dead worker's list holds, and judges stock workers' runs by RQ's own
leases (jobs/janitor.py). On a real Redis, with RQ's own calls.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from rq import Queue
from rq.executions import Execution
from rq.job import Job
from rq.worker import Worker

from jobs import janitor, keys, lifecycle
from jobs.rq_schema import SERIALIZER
from jobs.worker import WAIT_SLICE_S, LaneWorker
from tests.helpers import wait_until
from tests.jobs.test_janitor import run, store, trusted_janitor  # noqa: F401 - store is a fixture

DEAD = "dead-lane-worker"
ALIVE = "live-lane-worker"


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(janitor, "TRUST_AFTER_S", 0.3)
    monkeypatch.setattr(janitor, "STOCK_TRUST_AFTER_S", 0.3)
    monkeypatch.setattr(janitor, "UNSTARTED_GRACE_S", 0.3)


def beating(redis_client, name: str, alive: bool) -> None:
    """A LaneWorker's liveness as jobs/liveness.py writes it."""
    redis_client.sadd(keys.BEATING_WORKERS, name)
    if alive:
        redis_client.set(keys.worker_alive(name), 1, px=60_000)


def taken(redis_client, name: str) -> list[str]:
    return [j.decode() for j in redis_client.lrange(lifecycle.taken_key(name), 0, -1)]


# --- taking ---------------------------------------------------------------------


def test_take_moves_the_first_job_of_the_first_non_empty_queue_into_the_workers_list(store, redis_client):
    runs = lifecycle.of(redis_client)
    assert runs.take(ALIVE, ["soft", "hard"]) is None
    hard = store.submit([3000])[3000].task_id
    soft_first, soft_second = (store.submit([n])[n].task_id for n in (5, 6))
    # RQ's order: the worker's queues as given, each from its front.
    assert runs.take(ALIVE, ["soft", "hard"]) == ("soft", soft_first)
    assert runs.take(ALIVE, ["soft", "hard"]) == ("soft", soft_second)
    assert runs.take(ALIVE, ["soft", "hard"]) == ("hard", hard)
    assert taken(redis_client, ALIVE) == [soft_first, soft_second, hard]
    assert redis_client.llen("rq:queue:soft") == redis_client.llen("rq:queue:hard") == 0
    assert store.states([hard])[hard].status == "queued"  # taken is not started


def test_registering_the_run_moves_the_job_from_the_taken_list_to_the_started_registry_at_once(
        store, redis_client):
    task_id = store.submit([3001])[3001].task_id
    worker = LaneWorker([Queue(name, connection=redis_client, serializer=SERIALIZER) for name in ("soft", "hard")],
                        connection=redis_client)
    job, queue = worker._take(timeout=None)
    assert (job.id, queue.name) == (task_id, "hard") and taken(redis_client, worker.name) == [task_id]
    execution = worker.prepare_execution(job)
    assert taken(redis_client, worker.name) == []
    assert redis_client.zscore("rq:wip:hard", execution.composite_key) is not None


def test_a_burst_worker_of_two_queues_runs_every_job_and_holds_none(store, redis_client):
    ids = [store.submit([n])[n].task_id for n in (7, 8, 2000, 2001)]
    worker = LaneWorker([Queue(name, connection=redis_client, serializer=SERIALIZER) for name in ("soft", "hard")],
                        connection=redis_client)
    worker.work(burst=True, logging_level="WARNING")
    assert {task_id: store.states([task_id])[task_id].status for task_id in ids} == dict.fromkeys(ids, "finished")
    assert taken(redis_client, worker.name) == [] and redis_client.zcard("rq:wip:hard") == 0


def test_a_waiting_worker_of_two_queues_takes_a_job_of_its_first_queue_at_once_and_of_the_other_within_a_slice(
        store, redis_client):
    worker = LaneWorker([Queue(name, connection=redis_client, serializer=SERIALIZER) for name in ("soft", "hard")],
                        connection=redis_client)
    for number in (9, 2002):
        got: dict = {}
        waiter = threading.Thread(target=lambda: got.update(result=worker._take(timeout=10)))
        waiter.start()
        wait_until(lambda: any(c.get("cmd") == "blmove" and "b" in c.get("flags", "") for c in redis_client.client_list()), timeout=5,
                   what="the worker's blocking wait")
        pushed = time.monotonic()
        task_id = store.submit([number])[number].task_id
        waiter.join(10)
        waited = time.monotonic() - pushed
        job, queue = got["result"]
        assert job.id == task_id and taken(redis_client, worker.name) == [task_id]
        redis_client.delete(lifecycle.taken_key(worker.name))
        assert waited < WAIT_SLICE_S + 0.5, (queue.name, waited)


# --- a dead LaneWorker's taken list ------------------------------------------------------------


def test_a_dead_workers_taken_job_goes_back_to_the_front_of_its_queue_at_once_and_the_worker_is_forgotten(
        store, redis_client, monkeypatch):
    monkeypatch.setattr(janitor, "UNSTARTED_GRACE_S", 30)  # no grace for the dead
    first, second = (store.submit([n])[n].task_id for n in (4000, 4001))
    beating(redis_client, DEAD, alive=False)
    assert lifecycle.of(redis_client).take(DEAD, ["soft", "hard"]) == ("hard", first)
    recovery = run(trusted_janitor(redis_client))
    assert recovery.requeued == [first]
    assert redis_client.lrange("rq:queue:hard", 0, -1) == [first.encode(), second.encode()]
    assert taken(redis_client, DEAD) == [] and store.states([first])[first].status == "queued"
    assert not redis_client.sismember(keys.BEATING_WORKERS, DEAD)


def test_a_live_workers_taken_job_is_left_alone_until_it_has_held_it_unstarted_for_the_grace(
        store, redis_client, monkeypatch):
    monkeypatch.setattr(janitor, "UNSTARTED_GRACE_S", 1.5)  # longer than a round's lock
    task_id = store.submit([4002])[4002].task_id
    beating(redis_client, ALIVE, alive=True)
    lifecycle.of(redis_client).take(ALIVE, ["hard"])
    sweeper = trusted_janitor(redis_client)
    seen = time.monotonic()
    assert run(sweeper).requeued == []
    assert taken(redis_client, ALIVE) == [task_id]
    recovery = wait_until(lambda: (found := sweeper.run_once()) and found.requeued and found, timeout=5,
                          what="the requeue")
    assert recovery.requeued == [task_id] and time.monotonic() - seen >= 1.5
    assert redis_client.lrange("rq:queue:hard", 0, -1) == [task_id.encode()]
    assert redis_client.sismember(keys.BEATING_WORKERS, ALIVE)


def test_a_job_cancelled_while_a_dead_worker_held_it_is_not_requeued(store, redis_client):
    task_id = store.submit([4003])[4003].task_id
    beating(redis_client, DEAD, alive=False)
    lifecycle.of(redis_client).take(DEAD, ["hard"])
    assert store.cancel(task_id, "server-1", others_here=False) == "stopped"
    assert run(trusted_janitor(redis_client)).requeued == []
    assert taken(redis_client, DEAD) == [] and redis_client.llen("rq:queue:hard") == 0
    assert redis_client.hget(f"rq:job:{task_id}", "factorial_state") == b"cancelled"


def test_a_taken_job_is_put_back_once_however_many_janitors_try(store, redis_client):
    task_id = store.submit([4004])[4004].task_id
    lifecycle.of(redis_client).take(DEAD, ["hard"])
    runs = lifecycle.of(redis_client)
    assert [runs.put_back_taken(task_id, DEAD) for _ in range(2)] == [True, False]
    assert redis_client.lrange("rq:queue:hard", 0, -1) == [task_id.encode()]


# --- stock workers: RQ's own leases ---------------------------------------------------------------


def stock_start(redis_client, job_id: str, worker: str, lease_s: int) -> Execution:
    """What a stock worker and its horse write when a job starts: RQ's execution (its lease) and
    the job function's own claim of a run (jobs/factorial.py ``_own_run``)."""
    job = Job.fetch(job_id, connection=redis_client, serializer=SERIALIZER)
    redis_client.lmove(f"rq:queue:{job.origin}", f"rq:queue:{job.origin}:intermediate")
    with redis_client.pipeline() as pipe:
        execution = Execution.create(job, lease_s, pipeline=pipe, worker_name=worker)
        job.prepare_for_execution(worker, pipeline=pipe)
        pipe.lrem(f"rq:queue:{job.origin}:intermediate", 0, job_id)
        pipe.execute()
    assert lifecycle.of(redis_client).start(job_id, "stock-run-1", [job_id], publish=False)
    return execution


def register_stock_worker(redis_client, name: str) -> None:
    """RQ's worker key, as a stock worker's heartbeat keeps it."""
    redis_client.hset(Worker.redis_worker_namespace_prefix + name, "state", "busy")
    redis_client.expire(Worker.redis_worker_namespace_prefix + name, 90)


def test_a_stock_workers_run_whose_lease_expired_runs_again(store, redis_client):
    task_id = store.submit([5000])[5000].task_id
    register_stock_worker(redis_client, "stock-a")
    execution = stock_start(redis_client, task_id, "stock-a", lease_s=1)
    sweeper = trusted_janitor(redis_client)
    assert run(sweeper).requeued == []  # leased: its worker may still be computing
    wait_until(lambda: not redis_client.exists(execution.key), timeout=5, what="the lease to expire")
    recovery = wait_until(lambda: (found := sweeper.run_once()) and found.requeued and found, timeout=5,
                          what="the requeue")
    assert recovery.requeued == [task_id]
    assert redis_client.lrange("rq:queue:hard", 0, -1) == [task_id.encode()]
    assert redis_client.zcard("rq:wip:hard") == 0 and store.states([task_id])[task_id].status == "queued"
    # The lost run's end is refused: the next run's is the one that counts.
    assert not lifecycle.of(redis_client).finish(task_id, "stock-run-1", {task_id: b"late"}, 60)


def test_a_stock_workers_run_whose_worker_key_expired_runs_again(store, redis_client):
    task_id = store.submit([5001])[5001].task_id
    stock_start(redis_client, task_id, "stock-b", lease_s=60)  # no worker key: it expired
    assert run(trusted_janitor(redis_client)).requeued == [task_id]


def test_a_live_stock_workers_run_is_left_alone_and_so_is_a_job_the_service_did_not_make(store, redis_client):
    task_id = store.submit([5002])[5002].task_id
    register_stock_worker(redis_client, "stock-c")
    stock_start(redis_client, task_id, "stock-c", lease_s=60)
    foreign = Queue("hard", connection=redis_client, serializer=SERIALIZER).enqueue(
        "jobs.factorial.factorial_digits", 5)
    redis_client.lrem("rq:queue:hard", 0, foreign.id)
    with redis_client.pipeline() as pipe:  # a stock worker died running a job of RQ's own
        Execution.create(foreign, 1, pipeline=pipe, worker_name="stock-gone")
        pipe.execute()
    wait_until(lambda: redis_client.zcard("rq:wip:hard") == 2 and not redis_client.keys("rq:execution:" + foreign.id
                                                                                        + ":*"),
               timeout=5, what="the foreign run's lease to expire")
    assert run(trusted_janitor(redis_client)).requeued == []
    # RQ's own cleanup has the foreign job; the service's job runs on.
    assert redis_client.zcard("rq:wip:hard") == 2 and store.states([task_id])[task_id].status == "started"


# --- stock workers: runs RQ ended without the job's own end -------------------------------------


def rq_failed(redis_client, job_id: str, worker: str, ran_s: float) -> None:
    """What a stock worker writes when its horse dies: RQ's failure of the job (no callback ran)."""
    job = Job.fetch(job_id, connection=redis_client, serializer=SERIALIZER)
    job.started_at = datetime.now(timezone.utc) - timedelta(seconds=ran_s)
    job.ended_at = datetime.now(timezone.utc)
    with redis_client.pipeline() as pipe:
        job.save(pipeline=pipe)
        job.set_status("failed", pipeline=pipe)
        Queue(job.origin, connection=redis_client, serializer=SERIALIZER).failed_job_registry.add(
            job, ttl=600, pipeline=pipe, exc_string="Work-horse terminated")
        pipe.execute()


def test_a_stock_run_whose_horse_died_runs_again_and_one_killed_past_its_limit_is_a_timeout(
        store, redis_client, monkeypatch):
    monkeypatch.setattr(janitor, "UNSTARTED_GRACE_S", 1.5)  # longer than a round's lock
    register_stock_worker(redis_client, "stock-d")
    died, overran = (store.submit([n])[n].task_id for n in (5003, 5004))
    for task_id, ran_s in ((died, 2), (overran, 125)):  # the hard limit is 60 s; RQ kills at 120
        execution = stock_start(redis_client, task_id, "stock-d", lease_s=60)
        redis_client.zrem("rq:wip:hard", execution.composite_key)  # RQ's end of the run
        rq_failed(redis_client, task_id, "stock-d", ran_s)
    sweeper = trusted_janitor(redis_client)
    assert run(sweeper).requeued == []  # first sight: a failure callback may be on its way
    recovery = wait_until(lambda: (found := sweeper.run_once()) and (found.requeued or found.failed) and found,
                          timeout=5, what="the runs RQ ended")
    assert (recovery.requeued, recovery.failed) == ([died], [overran])
    assert redis_client.lrange("rq:queue:hard", 0, -1) == [died.encode()]
    assert redis_client.zrange("rq:failed:hard", 0, -1) == [overran.encode()]
    states = store.states([died, overran])
    assert states[died].status == "queued" and states[overran].error.code.value == "timeout"
