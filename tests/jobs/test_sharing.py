"""One job per number, however many servers get it at the same instant (issue 12, point 1)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from redis import Redis

from jobs import keys
from jobs.store import ANONYMOUS, JobStore
from settings import Settings
from tests.conftest import ServedApp
from tests.helpers import Client

TRIALS = 100
STORES = 4


def _submit_together(stores: list[JobStore], numbers: list[int]) -> list[dict]:
    """Every store submits ``numbers`` from its own thread and connection, released at one instant."""
    barrier = threading.Barrier(len(stores))
    answers: list[dict] = [{} for _ in stores]

    def run(i: int) -> None:
        barrier.wait(timeout=10)
        answers[i] = stores[i].submit(numbers)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    return answers


def _waiting_job_ids(redis_client, queue: str) -> list[bytes]:
    """The jobs waiting for ``queue``, oldest first: in the RQ queue, then in one client's pending list."""
    return redis_client.lrange(f"rq:queue:{queue}", 0, -1) + redis_client.lrange(keys.pending(queue, ANONYMOUS), 0, -1)


@pytest.fixture
def stores(redis_url):
    settings = Settings(redis_url=redis_url, soft_batch_size=10)
    made = [JobStore(Redis.from_url(redis_url), settings) for _ in range(STORES)]
    yield made
    for store in made:
        store.redis.close()


@pytest.mark.parametrize("first", [5_000, 100])  # hard numbers, then soft ones in batches
def test_stores_on_separate_connections_make_one_job_per_number(stores, redis_client, first):
    hard = first > 1000
    for trial in range(TRIALS):
        numbers = [first + trial] if hard else [first + 3 * trial + k for k in range(3)]
        answers = _submit_together(stores, numbers)
        for number in numbers:
            assert len({a[number].task_id for a in answers}) == 1, f"trial {trial}: {number} got several jobs"
    # Every job made is a job someone holds: none left over from a lost race.
    if hard:
        assert stores[0].jobs_waiting()["hard"] == TRIALS
    else:
        # Each trial's three numbers went to one batch job; a server that
        # found all three taken made none.
        assert stores[0].jobs_waiting()["soft"] == TRIALS
        for job_id in _waiting_job_ids(redis_client, "soft"):
            assert redis_client.llen(b"factorial:batch:" + job_id) == 3


def test_a_batch_leaves_out_the_numbers_another_job_has(stores, redis_client):
    taken = stores[0].submit([7, 8])
    answers = stores[1].submit([6, 7, 8, 9])
    assert answers[7].task_id == taken[7].task_id and answers[8].task_id == taken[8].task_id
    assert answers[6].task_id != answers[9].task_id
    newest = _waiting_job_ids(redis_client, "soft")[-1]
    members = [m.decode().split(":")[0] for m in redis_client.lrange(b"factorial:batch:" + newest, 0, -1)]
    assert members == ["6", "9"]


@pytest.mark.gen_test(timeout=120)
async def test_two_server_processes_asked_at_once_make_one_job(redis_url, redis_client):
    # 240 requests from one host within a second or two: over one client's rate, so no per-client rate here.
    servers = [ServedApp(redis_url, client_max_requests_per_s=0).start() for _ in range(2)]
    try:
        clients = [await Client.connect(server.ws_url) for server in servers for _ in range(2)]
        for trial in range(30):
            for number in (20_000 + trial, 300 + trial):
                await asyncio.gather(*(c.send({"type": "factorial", "number": number}) for c in clients))
                acks = await asyncio.gather(*(c.receive() for c in clients))
                assert len({a["task_id"] for a in acks}) == 1, (number, acks)
        assert JobStore(redis_client, Settings(redis_url=redis_url)).jobs_waiting() == {"soft": 30, "hard": 30}
    finally:
        for server in servers:
            server.stop()
