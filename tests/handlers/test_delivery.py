"""handlers/delivery.py on a real Redis with real workers: ends found by event and by sweep,
subscribers that go away, and a Redis outage it resumes from by itself."""

from __future__ import annotations

import asyncio
import collections
import json
import logging

import pytest
from redis import Redis

import protocol
from handlers.delivery import ResultDelivery
from handlers.in_flight import InFlight
from jobs.gateway import JobGateway
from jobs.store import JobStore
from server import connect_redis
from settings import Settings
from tests.conftest import RedisServer
from tests.helpers import append_event, async_wait_until


class Subscriber:
    """A connection as delivery sees it: frames written, or none when closed."""

    def __init__(self, name: str):
        self.name = name
        self.frames: list[dict] = []
        self.closed = False

    def send(self, frame, ref=None) -> int:
        if self.closed:
            return 0
        frame = protocol.with_ref(frame, ref)
        self.frames.append(json.loads(frame))
        return len(frame)

    def __repr__(self) -> str:
        return f"Subscriber({self.name})"


@pytest.fixture
def make_delivery(io_loop):
    made = []

    def make(settings: Settings) -> ResultDelivery:
        jobs = JobGateway(JobStore(connect_redis(settings), settings))
        delivery = ResultDelivery(jobs, settings)
        made.append(delivery)
        delivery.start()
        return delivery

    yield make
    for delivery in made:
        delivery.stop()
        delivery.jobs.close()


async def acked(delivery: ResultDelivery, number: int) -> str:
    return (await delivery.jobs.request_submit(number)).task_id


@pytest.mark.gen_test(timeout=60)
async def test_an_end_is_delivered_by_its_event_when_no_sweep_comes(make_delivery, make_settings, make_worker):
    # One sweep at the first tick, then none for an hour: only the event can deliver.
    delivery = make_delivery(make_settings(sweep_interval_s=3600))
    task_id = await acked(delivery, 3000)
    subscriber = Subscriber("a")
    delivery.watch(task_id, subscriber, ref="r")
    await async_wait_until(lambda: delivery._next_sweep > 0, what="the first sweep")

    make_worker()
    await async_wait_until(lambda: any(f["type"] == "success" for f in subscriber.frames), timeout=30,
                           what="the success")
    success = subscriber.frames[-1]
    assert success["task_id"] == task_id and success["digits"] == 9131 and success["ref"] == "r"
    # A start push may come before it (hard jobs announce theirs), and nothing after it.
    assert [f["type"] for f in subscriber.frames] in (["success"], ["status", "success"])
    assert delivery.waiting_jobs == 0 and delivery.waiting_subscribers == 0


@pytest.mark.gen_test(timeout=30)
async def test_an_end_without_an_event_is_found_by_the_sweep(make_delivery, make_settings, redis_client):
    delivery = make_delivery(make_settings())
    task_id = await acked(delivery, 11)  # no worker: it stays queued
    subscriber = Subscriber("a")
    delivery.watch(task_id, subscriber, ref=1)
    # The job vanishes with no event, as when its records expire.
    for key in redis_client.scan_iter(f"*{task_id}*"):
        redis_client.delete(key)
    await async_wait_until(lambda: subscriber.frames, timeout=10, what="the sweep's answer")
    assert subscriber.frames == [{"type": "error", "code": "unknown_task_id", "task_id": task_id, "ref": 1,
                                  "result": subscriber.frames[0]["result"]}]
    assert delivery.waiting_jobs == 0


@pytest.mark.gen_test(timeout=60)
async def test_a_subscriber_gone_gets_nothing_and_the_others_get_one_answer_each(make_delivery, make_settings,
                                                                                   make_worker):
    delivery = make_delivery(make_settings())
    task_id = await acked(delivery, 12)
    stays, leaves, closes = Subscriber("stays"), Subscriber("leaves"), Subscriber("closes")
    in_flight = InFlight()
    delivery.watch(task_id, stays, ref="one", ticket=in_flight.start("a", stays))
    # The same job asked twice on one connection.
    delivery.watch(task_id, stays, ref="two", ticket=in_flight.start("a", stays))
    delivery.watch(task_id, leaves, ticket=in_flight.start("a", leaves))
    delivery.watch(task_id, closes, ticket=in_flight.start("a", closes))
    delivery.forget(leaves)
    closes.closed = True  # gone without forget: its write finds it closed
    # Each request counts, a repeat of the same job too (handlers/in_flight.py).
    assert in_flight.of(leaves) == 0 and in_flight.of(stays) == 2

    make_worker()
    await async_wait_until(lambda: len(stays.frames) == 2, timeout=30, what="both answers")
    assert [(f["type"], f["result"], f["ref"]) for f in stays.frames] == [
        ("success", 479001600, "one"), ("success", 479001600, "two")]
    assert leaves.frames == [] and closes.frames == []
    assert delivery.waiting_jobs == 0 and delivery.waiting_subscribers == 0
    assert in_flight.clients() == set()  # every request's count was taken back with its answer


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "redis", append_only=True).start()
    yield server
    server.stop()


@pytest.mark.slow
@pytest.mark.gen_test(timeout=90)
async def test_an_outage_is_logged_once_at_each_end_and_delivery_resumes(make_delivery, own_redis, caplog, make_worker,
                                                                         make_settings):
    delivery = make_delivery(make_settings(redis_url=own_redis.url))
    task_id = await acked(delivery, 13)
    subscriber = Subscriber("a")
    delivery.watch(task_id, subscriber)

    with caplog.at_level(logging.WARNING, logger="jobs.gateway"):
        own_redis.stop()
        await async_wait_until(lambda: delivery.jobs.outage.down, timeout=10, what="the outage to be seen")
        # Delivery keeps trying twice a second; the log does not.
        await asyncio.sleep(4)  # the outage's length: a duration, not a wait
        own_redis.start()
        make_worker(url=own_redis.url)
        await async_wait_until(lambda: subscriber.frames, timeout=30, what="the answer after the outage")
    assert subscriber.frames == [{"type": "success", "task_id": task_id, "result": 6227020800, "digits": 10}]
    lines = [r.getMessage() for r in caplog.records if r.name == "jobs.gateway"]
    assert lines[0].startswith("Redis unreachable: ")
    assert lines[-1].startswith("Redis reachable again after ")
    # Reminders at 1, 3, 7 s: at most three in a little over four seconds.
    assert 1 <= len([line for line in lines if "still unreachable" in line]) <= 3, lines
    assert len(lines) <= 5, lines
    assert not delivery.jobs.outage.down


@pytest.mark.gen_test(timeout=30)
async def test_a_start_is_pushed_for_hard_jobs_only(make_delivery, make_settings):
    # A soft job's start seen by a sweep is not announced: a client of the old
    # service reads the success right after the acknowledgement.
    from jobs.states import STARTED, JobState

    delivery = make_delivery(make_settings(sweep_interval_s=3600))
    soft, hard = Subscriber("soft"), Subscriber("hard")
    delivery.watch("a" * 32, soft, ref="s")
    delivery.watch("b" * 32, hard, ref="h")
    await delivery._settle_state(JobState("a" * 32, STARTED, "soft"))
    await delivery._settle_state(JobState("b" * 32, STARTED, "hard"))
    assert soft.frames == []
    assert hard.frames == [{"type": "status", "task_id": "b" * 32, "status": "started", "ref": "h"}]


@pytest.mark.gen_test(timeout=60)
async def test_close_waits_for_the_tick_under_way_so_no_call_follows_the_job_client(make_settings, caplog):
    # As a draining server does: close delivery, then the job gateway's threads.
    caplog.set_level(logging.ERROR)
    for _ in range(5):
        settings = make_settings()
        jobs = JobGateway(JobStore(connect_redis(settings), settings))
        delivery = ResultDelivery(jobs, settings)
        delivery.watch("c" * 32, Subscriber("c"))  # something to share with other servers each tick
        delivery.start()
        await async_wait_until(lambda: delivery._next_sweep > 0, what="a first tick")
        await delivery.close()
        jobs.close()
        await asyncio.sleep(0.1)  # a window, not a wait: a tick that outlived close() would fail in it
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


@pytest.mark.gen_test(timeout=30)
async def test_thousands_of_results_ending_together_are_written_a_slice_per_loop_pass(make_delivery, redis_url,
                                                                                       make_settings):
    from jobs import keys
    from jobs.states import FINISHED
    from tests.handlers.test_pacing import PassCounter

    delivery = make_delivery(make_settings())
    counter = PassCounter()
    passes: list[int] = []

    class Timed(Subscriber):
        def send(self, frame, ref=None) -> int:
            passes.append(counter.passes)
            return super().send(frame, ref)

    subscriber = Timed("many")
    task_ids = [f"{i:032x}" for i in range(1000)]
    for task_id in task_ids:
        delivery.watch(task_id, subscriber)
    # 1000 ends in one stream read: what a burst of small jobs looks like to a server.
    redis = Redis.from_url(redis_url)
    pipe = redis.pipeline()
    for task_id in task_ids:
        pipe.set(keys.payload(task_id), json.dumps({"type": "success", "task_id": task_id, "result": 1}))
    pipe.execute()
    for i in range(0, 1000, 50):
        append_event(redis, task_ids[i : i + 50], FINISHED)
    try:
        await async_wait_until(lambda: len(subscriber.frames) == 1000, timeout=20, what="every result")
    finally:
        counter.running = False
    per_pass = collections.Counter(passes)
    # WRITE_SLICE_FRAMES (200) per pass: the 1000 frames take at least 5 passes.
    assert max(per_pass.values()) <= 200 and len(per_pass) >= 5, per_pass
    assert {frame["task_id"] for frame in subscriber.frames} == set(task_ids)
