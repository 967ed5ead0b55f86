"""Fair scheduling: a light client's job waits behind about one job per busy client, not behind their backlogs."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis import Redis
from tornado.httpclient import HTTPRequest

from jobs import keys
from jobs.store import JobStore
from settings import Settings
from tests.helpers import MAX_MESSAGE_BYTES, Client, jobs_waiting

HEAVY_BACKLOG = 40


@pytest.fixture
def store(redis_url):
    made = JobStore(Redis.from_url(redis_url), Settings(redis_url=redis_url))
    yield made
    made.redis.close()


def _take_one(redis_client, queue: str = "hard") -> bytes | None:
    """What a worker does: take the job at the head of the RQ queue."""
    return redis_client.lpop(f"rq:queue:{queue}")


def test_each_busy_client_gives_one_job_per_turn(store, redis_client):
    heavy = {name: store.submit(list(range(start, start + HEAVY_BACKLOG)), [name] * HEAVY_BACKLOG)
             for name, start in (("heavy-1", 10_000), ("heavy-2", 20_000), ("heavy-3", 30_000))}
    light = store.submit([50_000], ["light"])[50_000].task_id
    # No worker is registered: the RQ queue holds one job, the rest wait in their lists.
    assert redis_client.llen("rq:queue:hard") == 1
    assert jobs_waiting(redis_client, "hard") == 3 * HEAVY_BACKLOG + 1
    taken = []
    while (job_id := _take_one(redis_client)) is not None and job_id.decode() != light:
        taken.append(job_id.decode())
        store.dispatch()
    # The job that was in the RQ queue, then three busy clients, one turn each, then the light one.
    assert job_id is not None and job_id.decode() == light
    owners = [next(name for name, answers in heavy.items() if t in {s.task_id for s in answers.values()})
              for t in taken]
    assert owners == ["heavy-1", "heavy-1", "heavy-2", "heavy-3"]
    # The busy clients' backlogs are all still there, and drain in turn.
    store.dispatch()
    while _take_one(redis_client) is not None:
        store.dispatch()
    assert jobs_waiting(redis_client, "hard") == 0
    assert redis_client.llen(keys.pending_clients("hard")) == 0


def test_the_rq_queue_is_kept_at_one_job_per_worker(store, redis_client):
    for worker in ("w1", "w2", "w3"):
        redis_client.sadd("rq:workers:hard", f"rq:worker:{worker}")
    store.submit(list(range(5000, 5020)), ["heavy"] * 20)
    assert redis_client.llen("rq:queue:hard") == 3
    _take_one(redis_client)
    assert store.dispatch() == 1 and redis_client.llen("rq:queue:hard") == 3


def test_a_full_queue_counts_the_jobs_in_pending_lists(redis_url, redis_client):
    store = JobStore(Redis.from_url(redis_url), Settings(redis_url=redis_url, max_queue_length=5))
    answers = store.submit(list(range(5000, 5007)), ["heavy"] * 7)
    assert [type(a).__name__ for a in answers.values()].count("ProtocolError") == 2
    assert str(store.submit([9000], ["light"])[9000]).startswith("busy")
    assert redis_client.llen("rq:queue:hard") == 1 and jobs_waiting(redis_client, "hard") == 5


async def _connect_from(ws_url: str, address: str) -> Client:
    """A client whose socket is bound to ``address`` (another loopback address is another client)."""
    return await Client.connect(HTTPRequest(ws_url, network_interface=address))


async def _successes(client: Client, count: int, seen: dict[str, float], timeout: float) -> None:
    while sum(1 for _ in seen) < count:
        message = await client.receive(timeout)
        if message["type"] == "success":
            seen[message["task_id"]] = time.monotonic()


@pytest.mark.gen_test(timeout=180)
@pytest.mark.parametrize("worker_class", ["jobs.worker.LaneWorker", None], ids=["lane", "stock"])
async def test_a_light_clients_job_overtakes_a_heavy_clients_backlog(ws_url, redis_url, worker_class, make_worker):
    workers = [make_worker(worker_class=worker_class)]
    heavy_connections = [await _connect_from(ws_url, "127.0.0.1") for _ in range(4)]
    numbers = iter(range(30_000, 30_000 + HEAVY_BACKLOG))
    heavy_ids = set()
    for connection in heavy_connections:
        for _ in range(HEAVY_BACKLOG // len(heavy_connections)):
            await connection.send({"type": "factorial", "number": next(numbers)})
    for connection in heavy_connections:
        for _ in range(HEAVY_BACKLOG // len(heavy_connections)):
            ack = await connection.receive(20)
            while ack["type"] == "status":  # an earlier job of this connection started
                ack = await connection.receive(20)
            assert ack["type"] == "result", ack
            heavy_ids.add(ack["task_id"])

    light = await _connect_from(ws_url, "127.0.0.2")
    light_ack = await light.ask({"type": "factorial", "number": 31_000 + HEAVY_BACKLOG})
    asked_at = time.monotonic()
    ended: dict[str, float] = {}
    heavy_done = asyncio.gather(*(_successes(c, HEAVY_BACKLOG // len(heavy_connections), {}, 120)
                                  for c in heavy_connections))
    light_message = await light.receive(120)
    while light_message["type"] == "status":
        light_message = await light.receive(120)
    light_at = time.monotonic()
    assert light_message["type"] == "success" and light_message["task_id"] == light_ack["task_id"]

    # Count the heavy jobs that ended after the light one was asked and before it ended.
    finished = Redis.from_url(redis_url)
    for task_id in heavy_ids:
        ended_at = finished.hget(f"rq:job:{task_id}", "ended_at")
        if ended_at:
            ended[task_id] = ended_at
    light_ended = finished.hget(f"rq:job:{light_ack['task_id']}", "ended_at")
    before_light = sum(1 for t in ended.values() if t < light_ended)
    # The backlog: HEAVY_BACKLOG jobs; at most one running, one in the RQ
    # queue and one turn of the one busy client may go first.
    busy_clients, worker_count = 1, len(workers)
    assert before_light <= busy_clients + 2 * worker_count, (before_light, light_at - asked_at)
    await heavy_done  # and the backlog is all served
