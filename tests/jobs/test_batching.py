"""Soft requests that arrive together share an RQ job, and each keeps its own task id."""

import pytest

from jobs.factorial import factorial_digits
from jobs.store import JobStore, _chunks
from redis import Redis
from settings import Settings
from tests.conftest import WorkerProcess
from tests.helpers import Client


def test_chunks_split_in_order_and_keep_every_item():
    assert _chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert _chunks([], 3) == []


def test_one_submit_makes_one_soft_job_per_batch_and_one_hard_job_per_number(redis_url, redis_client):
    store = JobStore(Redis.from_url(redis_url), Settings(redis_url=redis_url, soft_batch_size=40))
    answers = store.submit(list(range(100)) + [5000, 6000])
    assert len({state.task_id for state in answers.values()}) == 102
    assert store.jobs_waiting() == {"soft": 3, "hard": 2}  # 40 + 40 + 20 soft numbers
    states = store.states([answers[7].task_id, answers[5000].task_id])
    assert [s.status for s in states.values()] == ["queued", "queued"]


@pytest.mark.gen_test(timeout=60)
async def test_requests_sent_together_share_jobs_but_not_task_ids(ws_url, redis_url, redis_client):
    client = await Client.connect(ws_url)
    numbers = list(range(500, 590))  # within MAX_IN_FLIGHT (100)
    for i, n in enumerate(numbers):
        await client.send({"type": "factorial", "number": n, "ref": i})
    acks = [await client.receive() for _ in numbers]
    assert [a["ref"] for a in acks] == list(range(len(numbers)))
    task_ids = {a["task_id"] for a in acks}
    assert len(task_ids) == len(numbers)
    # No worker yet: every job is still queued. Frames that arrive while a
    # round trip is under way go together in the next one, so 90 frames sent
    # back to back make fewer jobs than requests (how many depends on timing).
    jobs = JobStore(redis_client, Settings(redis_url=redis_url)).jobs_waiting()["soft"]
    assert 1 <= jobs < len(numbers)

    # A member of a batch can be looked up by its own id from another connection.
    other = await Client.connect(ws_url)
    status = await other.ask({"type": "result", "task_id": acks[7]["task_id"]})
    assert status == {"type": "status", "task_id": acks[7]["task_id"], "status": "queued"}

    worker = WorkerProcess(redis_url).start()
    try:
        results = {}
        while len(results) < len(numbers):
            message = await client.receive(30)
            if message["type"] == "status":  # a sweep may see a batch running
                assert message["status"] == "started"
                continue
            assert message["type"] == "success", message
            results[message["ref"]] = message
        for i, n in enumerate(numbers):
            assert results[i]["task_id"] == acks[i]["task_id"]
            assert results[i]["result"] == factorial_digits(n)
        pushed = await other.receive(30)
        while pushed["type"] == "status":
            pushed = await other.receive(30)
        assert pushed["task_id"] == acks[7]["task_id"] and pushed["result"] == factorial_digits(numbers[7])
        again = await other.ask({"type": "result", "task_id": acks[80]["task_id"]})
        assert again["type"] == "success" and again["result"] == factorial_digits(numbers[80])
    finally:
        worker.stop()


@pytest.mark.gen_test(timeout=60)
async def test_the_stock_rq_worker_serves_single_batched_and_hard_jobs(ws_url, redis_url):
    worker = WorkerProcess(redis_url, worker_class=None).start()  # plain ``rq worker soft hard``
    try:
        client = await Client.connect(ws_url)
        numbers = [5, 600, 601, 602, 50_000]
        for n in numbers:
            await client.send({"type": "factorial", "number": n, "ref": n})
        results = {}
        while len(results) < len(numbers):
            message = await client.receive(30)
            if message["type"] == "success":
                results[message["ref"]] = message["result"]
        assert results == {n: (120 if n == 5 else factorial_digits(n)) for n in numbers}
    finally:
        worker.stop()
