"""After job events, the server feeds the RQ queues in its next event read's round trip,
and small results come with their events."""

from redis import Redis

import protocol
from jobs.lifecycle import INLINE_ENTRY_BYTES
from jobs.states import FINISHED
from jobs.store import JobStore
from settings import Settings
from tests.helpers import append_event


def _store(redis_url) -> JobStore:
    return JobStore(Redis.from_url(redis_url), Settings(redis_url=redis_url))


def test_a_read_with_dispatch_moves_a_waiting_job_into_the_room_left(redis_url, redis_client):
    store = _store(redis_url)
    answers = store.submit([5000, 6000], ["a-client", "a-client"])
    # No worker: the RQ queue holds one job, the other waits in its client's list.
    assert redis_client.llen("rq:queue:hard") == 1
    taken = redis_client.lpop("rq:queue:hard").decode()  # a worker takes it

    store.sync_waits_and_read_events("0-0", 0, dispatch=True)

    waiting = (set(a.task_id for a in answers.values()) - {taken}).pop()
    assert redis_client.lrange("rq:queue:hard", 0, -1) == [waiting.encode()]


def test_it_still_dispatches_and_reads_after_redis_forgot_its_scripts(redis_url, redis_client):
    store = _store(redis_url)
    store.submit([5000, 6000], ["a-client", "a-client"])
    redis_client.lpop("rq:queue:hard")
    append_event(redis_client, ["t" * 32], FINISHED)
    redis_client.script_flush()  # what a Redis restart does to loaded scripts

    _, found = store.sync_waits_and_read_events("0-0", 0, dispatch=True)
    assert [e.task_id for e in found] == ["t" * 32]
    assert redis_client.llen("rq:queue:hard") == 1


def test_small_results_come_with_their_event_and_large_ones_do_not(redis_url, redis_client):
    small = {f"{i:032d}": protocol.success(f"{i:032d}", str(i) * 20) for i in range(3)}
    large = {"l" * 32: protocol.success("l" * 32, "7" * 3000)}
    append_event(redis_client, list(small) + list(large), FINISHED, payloads={**small, **large})

    _, found = _store(redis_url).read_events("0-0", 0)

    assert {e.task_id: e.payload for e in found} == {**small, "l" * 32: None}


def test_an_entry_carries_at_most_its_share_of_small_results(redis_url, redis_client):
    many = {f"{i:032d}": protocol.success(f"{i:032d}", "9" * 400) for i in range(20)}  # ~480 bytes each
    append_event(redis_client, list(many), FINISHED, payloads=many)

    _, found = _store(redis_url).read_events("0-0", 0)

    carried = [e for e in found if e.payload]
    assert 0 < sum(len(e.payload) for e in carried) <= INLINE_ENTRY_BYTES
    assert all(e.payload == many[e.task_id] for e in carried)
    assert len(found) == 20
