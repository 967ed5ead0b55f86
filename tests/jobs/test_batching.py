"""Soft requests that arrive together share an RQ job, and each keeps its own task id."""

import pytest

from jobs.factorial import factorial_digits
from jobs.store import JobStore, _chunks
from redis import Redis
from settings import Settings
from tests.conftest import wait_until
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
async def test_requests_sent_together_share_jobs_but_not_task_ids(ws_url, redis_url, redis_client, make_worker):
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

    make_worker()
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


@pytest.mark.gen_test(timeout=60)
async def test_the_stock_rq_worker_serves_single_batched_and_hard_jobs(ws_url, make_worker):
    make_worker(worker_class=None)  # plain ``rq worker soft hard``
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


# --- later requests join the client's waiting batch job (jobs/lua/submit.lua) ---


def _store(redis_url: str, batch: int = 5) -> JobStore:
    return JobStore(Redis.from_url(redis_url), Settings(redis_url=redis_url, soft_batch_size=batch))


def _job_of(redis_client, task_id: str) -> str:
    job = redis_client.get(f"factorial:task-job:{task_id}")
    return job.decode() if job else task_id


def test_a_later_request_joins_its_clients_waiting_batch_until_it_is_full(redis_url, redis_client):
    store = _store(redis_url, batch=5)
    first = store.submit([10, 11], ["alice", "alice"])
    batch = _job_of(redis_client, first[10].task_id)
    later = store.submit([12, 13, 14], ["alice"] * 3)
    assert {_job_of(redis_client, later[n].task_id) for n in (12, 13, 14)} == {batch}
    spill = store.submit([15, 16], ["alice"] * 2)  # the batch is full at 5
    assert {_job_of(redis_client, spill[n].task_id) for n in (15, 16)} != {batch}
    # Another client never joins it.
    bob = store.submit([17, 18], ["bob"] * 2)
    assert _job_of(redis_client, bob[17].task_id) != batch
    assert [m.decode() for m in redis_client.lrange(f"factorial:batch:{batch}", 0, -1)] == [
        f"{n}:{(first | later)[n].task_id}" for n in (10, 11, 12, 13, 14)]
    assert store.jobs_waiting()["soft"] == 3


def test_a_request_never_joins_a_batch_that_has_read_its_members(redis_url, redis_client):
    from jobs import events

    store = _store(redis_url, batch=50)
    first = store.submit([10, 11], ["alice"] * 2)
    batch = _job_of(redis_client, first[10].task_id)
    # What the batch job does as it starts: read its members, closing it.
    assert events.take_batch_members(redis_client, batch, 60)[0] == [10, 11]
    later = store.submit([12, 13], ["alice"] * 2)
    assert _job_of(redis_client, later[12].task_id) != batch


def test_requests_that_join_batches_while_a_worker_runs_them_all_get_their_answer(redis_url, redis_client, make_worker):
    # Many small submits race the worker closing batches: each task must end
    # up in exactly one job that computes it.
    store = _store(redis_url, batch=50)
    make_worker(queues=("soft",))
    task_ids = {}
    for start in range(1, 1001, 4):
        answers = store.submit(list(range(start, start + 4)), ["alice"] * 4)
        task_ids.update({n: answers[n].task_id for n in answers})

    def all_answered() -> bool:
        store.dispatch()  # a server's job: feed the RQ queue from the pending list
        return len(store.payloads(list(task_ids.values()))) == len(task_ids)

    wait_until(all_answered, timeout=60, what="every joined request's answer")
    payloads = store.payloads(list(task_ids.values()))
    for n in (1, 500, 1000):
        assert factorial_digits(n) in payloads[task_ids[n]].decode()
    # They shared jobs: far fewer than one job per submit.
    finished = redis_client.zcard("rq:finished:soft")
    assert finished < 250 / 2, finished
