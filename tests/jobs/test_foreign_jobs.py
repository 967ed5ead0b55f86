"""Write access to Redis is not code execution: a worker runs only the service's functions, from JSON.

A job written straight into Redis that names another function, or whose data
is a pickle (as RQ's default serializer writes it), is failed by the worker
(jobs/runnable.py, LaneWorker.execute_job) without being imported, unpickled
or run, and the worker goes on to the next job. Real redis-server, real
``rq worker`` processes started as the Procfile starts them.
"""

from __future__ import annotations

import os
import pickle
import zlib
from datetime import datetime, timezone

import pytest
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import resolve_serializer
from rq.utils import utcformat

from jobs import keys, lifecycle, rq_schema, runnable
from jobs.lifecycle import FIELDS
from jobs.store import BATCH_JOB, FACTORIAL_JOB, JobStore
from settings import Settings
from tests.helpers import wait_until


class TouchOnUnpickling:
    """Unpickled, it runs ``touch PATH``: what an attacker's pickle would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def write_job(redis_client, queue: str, job_id: str, data: bytes, **fields) -> None:
    """A job as RQ stores one, written field by field (``fields`` too) and pushed on its queue, as anyone with
    write access could."""
    stamp = utcformat(datetime.now(timezone.utc))
    redis_client.hset(rq_schema.JOB_PREFIX + job_id, mapping={
        "data": zlib.compress(data), "origin": queue, "status": JobStatus.QUEUED.value,
        "created_at": stamp, "enqueued_at": stamp, "description": "not the service's", "timeout": 60, **fields})
    redis_client.rpush(rq_schema.queue_key(queue), job_id)


def assert_failed_through_the_lifecycle(redis_client, queue: str, job_id: str, marker=None) -> None:
    """The job failed as the lifecycle fails a job (and RQ records it); ``marker``: the file it would make if run."""
    key = rq_schema.JOB_PREFIX + job_id
    wait_until(lambda: redis_client.hget(key, FIELDS["state"]) in (b"failed", b"finished")
               or (marker is not None and marker.exists()), timeout=15, what=f"job {job_id} to end")
    assert marker is None or not marker.exists(), "the job's code ran"
    assert redis_client.hget(key, FIELDS["state"]) == b"failed"
    assert redis_client.hget(key, FIELDS["code"]) == b"job_failed"
    assert redis_client.hget(key, FIELDS["text"]).startswith(b"the job was refused by its worker")
    wait_until(lambda: redis_client.hget(key, "status") == JobStatus.FAILED.value.encode(), timeout=5,
               what="RQ's record of the failure")
    assert job_id in FailedJobRegistry(queue, connection=redis_client, serializer=rq_schema.SERIALIZER).get_job_ids()
    assert 0 < redis_client.ttl(key)  # kept as long as any failure, then gone


def logged(log, *words: str) -> list[str]:
    """The lines of the worker's log holding every one of ``words``, once there is one (its output may lag)."""
    return wait_until(lambda: [line for line in log.read_text().splitlines() if all(w in line for w in words)],
                      timeout=5, what=f"a log line with {words}")


def worker_name(redis_client) -> str:
    [key] = redis_client.smembers("rq:workers")
    return key.decode().removeprefix("rq:worker:")


def a_real_factorial_finishes(redis_client, redis_url, number: int) -> None:
    store = JobStore(redis_client, Settings(redis_url=redis_url))
    task_id = store.submit([number])[number].task_id
    wait_until(lambda: store.states([task_id])[task_id].status == "finished", timeout=15,
               what=f"the factorial of {number} after the refused job")


@pytest.mark.parametrize("queue", ["soft", "hard"])
def test_a_job_naming_a_foreign_function_is_failed_unrun_and_the_worker_runs_the_next(
        redis_client, redis_url, make_worker, tmp_path, queue):
    marker = tmp_path / "ran"
    log = tmp_path / "worker.log"
    worker = make_worker(queues=(queue,), log_path=log)
    job_id = f"foreign-{queue}"
    write_job(redis_client, queue, job_id, rq_schema.SERIALIZER.dumps(["os.system", None, [f"touch {marker}"], {}]))

    assert_failed_through_the_lifecycle(redis_client, queue, job_id, marker)
    a_real_factorial_finishes(redis_client, redis_url, 7 if queue == "soft" else 3000)
    assert not marker.exists()
    assert worker.process.poll() is None
    refused = logged(log, "refused, not run")
    assert len(refused) == 1 and job_id in refused[0] and "'os.system'" in refused[0], refused


@pytest.mark.parametrize("queue", ["soft", "hard"])
def test_a_job_whose_data_is_a_pickle_is_failed_without_unpickling_it(
        redis_client, redis_url, make_worker, tmp_path, queue):
    marker = tmp_path / "unpickled"
    log = tmp_path / "worker.log"
    worker = make_worker(queues=(queue,), log_path=log)
    job_id = f"pickled-{queue}"
    payload = pickle.dumps((FACTORIAL_JOB, None, (TouchOnUnpickling(marker),), {}))
    write_job(redis_client, queue, job_id, payload)

    assert_failed_through_the_lifecycle(redis_client, queue, job_id, marker)
    a_real_factorial_finishes(redis_client, redis_url, 8 if queue == "soft" else 3001)
    assert not marker.exists()
    assert worker.process.poll() is None
    assert logged(log, job_id, "refused, not run", "not the service's JSON")


def test_a_job_naming_a_foreign_failure_callback_is_refused(redis_client, make_worker):
    make_worker(queues=("soft",))
    write_job(redis_client, "soft", "callback", rq_schema.SERIALIZER.dumps([FACTORIAL_JOB, None, [-1], {}]),
              failure_callback_name="os.system")

    assert_failed_through_the_lifecycle(redis_client, "soft", "callback")


# --- the rule itself, on jobs as RQ reads them ---------------------------------------------------


def job_from(redis_client, data: bytes, **fields) -> Job:
    redis_client.delete(rq_schema.JOB_PREFIX + "model")
    write_job(redis_client, "soft", "model", data, **fields)
    return Job.fetch("model", connection=redis_client, serializer=rq_schema.SERIALIZER)


def test_the_service_jobs_are_runnable_and_nothing_else(redis_client, redis_url):
    assert runnable.FUNCTIONS == {FACTORIAL_JOB, BATCH_JOB} == {"jobs.factorial.factorial",
                                                                "jobs.factorial.factorial_batch"}
    store = JobStore(redis_client, Settings(redis_url=redis_url, soft_batch_size=10))
    answers = store.submit([5, 6, 4000])
    job_ids = {(redis_client.get(keys.task_job(a.task_id)) or a.task_id.encode()).decode() for a in answers.values()}
    functions = set()
    for job_id in job_ids:
        job = Job.fetch(job_id, connection=redis_client, serializer=rq_schema.SERIALIZER)
        assert runnable.refusal(job) == "", job_id
        functions.add(job.func_name)
    assert functions == {FACTORIAL_JOB, BATCH_JOB}  # a batch of 5 and 6, and 4000 alone
    for name in ("builtins.eval", "os.system", "jobs.factorial.factorial_digits", "jobs.events.on_failure"):
        assert name in runnable.refusal(job_from(redis_client, rq_schema.SERIALIZER.dumps([name, None, [], {}])))
    assert "object" in runnable.refusal(job_from(redis_client, rq_schema.SERIALIZER.dumps(
        [FACTORIAL_JOB, {"x": 1}, [], {}])))
    assert "JSON" in runnable.refusal(job_from(redis_client, b"\x80\x05not json"))
    assert "JSON" in runnable.refusal(job_from(redis_client, rq_schema.SERIALIZER.dumps({"not": "a call"})))
    json_call = rq_schema.SERIALIZER.dumps([FACTORIAL_JOB, None, [5], {}])
    for field in ("success_callback_name", "failure_callback_name", "stopped_callback_name"):
        assert "callback" in runnable.refusal(job_from(redis_client, json_call, **{field: "os.system"}))
    assert "webhooks" in runnable.refusal(job_from(redis_client, json_call, webhooks=rq_schema.SERIALIZER.dumps(
        [{"url": "http://198.18.0.1/", "job_status": "failed"}]).decode()))


def test_the_rq_command_line_names_the_one_serializer():
    assert resolve_serializer(rq_schema.SERIALIZER_PATH) is rq_schema.SERIALIZER
    assert rq_schema.SERIALIZER.loads(rq_schema.SERIALIZER.dumps({"a": [1]})) == {"a": [1]}
    with pytest.raises(ValueError):
        rq_schema.SERIALIZER.loads(pickle.dumps(["x"]))


def test_the_worker_reads_json_whatever_serializer_it_is_given(redis_client):
    """``rq worker soft hard`` under the project's .env passes RQ's default (pickle): LaneWorker ignores it."""
    from rq.queue import Queue

    from jobs.worker import LaneWorker

    for given in (None, "rq.serializers.DefaultSerializer", "pickle", rq_schema.SERIALIZER_PATH):
        queues = [Queue("soft", connection=redis_client, serializer=given), "hard"]
        worker = LaneWorker(queues, connection=redis_client, serializer=given, prepare_for_work=False)
        assert worker.serializer is rq_schema.SERIALIZER, given
        assert [(q.name, q.serializer) for q in worker.queues] == [("soft", rq_schema.SERIALIZER),
                                                                    ("hard", rq_schema.SERIALIZER)], given
        assert worker._ordered_queues == worker.queues


def test_a_service_job_that_raises_still_ends_through_its_failure_callback_and_meta_round_trips(
        redis_client, make_worker):
    """JSON keeps what the service stores in a job: its failure callback's name and its meta."""
    from rq.queue import Queue

    from jobs.store import ON_FAILURE

    make_worker(queues=("soft",))
    queue = Queue("soft", connection=redis_client, serializer=rq_schema.SERIALIZER)
    job = queue.enqueue(FACTORIAL_JOB, "not a number", on_failure=ON_FAILURE, meta={"asked_by": ["a", 1]})
    key = rq_schema.JOB_PREFIX + job.id
    wait_until(lambda: redis_client.hget(key, FIELDS["state"]) == b"failed", timeout=15, what="the job to fail")
    assert redis_client.hget(key, FIELDS["text"]).startswith(b"the job failed: TypeError")  # events.on_failure's
    assert Job.fetch(job.id, connection=redis_client, serializer=rq_schema.SERIALIZER).meta == {"asked_by": ["a", 1]}


def test_a_job_hash_rq_cannot_read_is_dropped_and_the_worker_runs_the_next(
        redis_client, redis_url, make_worker, tmp_path):
    log = tmp_path / "worker.log"
    worker = make_worker(queues=("soft",), log_path=log)
    write_job(redis_client, "soft", "garbled", rq_schema.SERIALIZER.dumps([FACTORIAL_JOB, None, [5], {}]),
              result_ttl="not a number")

    assert logged(log, "garbled", "cannot be read")
    assert redis_client.llen(rq_schema.queue_key("soft")) == 0
    assert redis_client.llen(lifecycle.taken_key(worker_name(redis_client))) == 0
    # Submitted once the queue is empty: with no server here, nothing else would dispatch it.
    a_real_factorial_finishes(redis_client, redis_url, 9)
    assert worker.process.poll() is None
