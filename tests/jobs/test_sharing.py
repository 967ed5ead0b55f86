"""One job per number, however many servers get it at the same instant (issue 12, point 1)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from redis import Redis

from jobs import keys
from jobs.store import ANONYMOUS, JobStore
from settings import Settings
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


def _waiting_members(redis_client) -> list[list[int]]:
    """The numbers of each waiting soft batch job, oldest job first."""
    return [[int(m.decode().split(":")[0]) for m in redis_client.lrange(b"factorial:batch:" + job_id, 0, -1)]
            for job_id in _waiting_job_ids(redis_client, "soft")]


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
        # Each trial's numbers went into the client's waiting batch job, or a
        # new one once that was full (soft_batch_size=10); a server that found
        # all three taken added none.
        members = _waiting_members(redis_client)
        assert sorted(n for job in members for n in job) == list(range(first, first + 3 * TRIALS))
        assert all(len(job) <= 10 for job in members)
        assert len(members) == 3 * TRIALS // 10


def test_a_batch_leaves_out_the_numbers_another_job_has(stores, redis_client):
    taken = stores[0].submit([7, 8])
    answers = stores[1].submit([6, 7, 8, 9])
    assert answers[7].task_id == taken[7].task_id and answers[8].task_id == taken[8].task_id
    assert answers[6].task_id != answers[9].task_id
    # 6 and 9 joined the waiting batch of 7 and 8, once each.
    assert _waiting_members(redis_client) == [[7, 8, 6, 9]]


@pytest.mark.gen_test(timeout=120)
async def test_two_server_processes_asked_at_once_make_one_job(redis_url, redis_client, make_server):
    # 240 requests from one host within a second or two: over one client's rate, so no per-client rate here.
    servers = [make_server(client_max_requests_per_s=0) for _ in range(2)]
    clients = [await Client.connect(server.ws_url) for server in servers for _ in range(2)]
    for trial in range(30):
        for number in (20_000 + trial, 300 + trial):
            await asyncio.gather(*(c.send({"type": "factorial", "number": number}) for c in clients))
            acks = await asyncio.gather(*(c.receive() for c in clients))
            assert len({a["task_id"] for a in acks}) == 1, (number, acks)
    assert JobStore(redis_client, Settings(redis_url=redis_url)).jobs_waiting() == {"soft": 30, "hard": 30}
