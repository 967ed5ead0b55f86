"""After job events, the server fetches payloads and feeds the RQ queues in one round trip."""

from redis import Redis

import protocol
from jobs import keys
from jobs.store import JobStore
from settings import Settings


def _store(redis_url) -> JobStore:
    return JobStore(Redis.from_url(redis_url), Settings(redis_url=redis_url))


def test_payloads_come_back_and_a_waiting_job_moves_into_the_room_left(redis_url, redis_client):
    store = _store(redis_url)
    answers = store.submit([5000, 6000], ["a-client", "a-client"])
    # No worker: the RQ queue holds one job, the other waits in its client's list.
    assert redis_client.llen("rq:queue:hard") == 1
    taken = redis_client.lpop("rq:queue:hard").decode()  # a worker takes it...
    redis_client.set(keys.payload(taken), b'{"type":"success"}')  # ...and stores its result

    missing = "0" * 32
    found = store.payloads_and_dispatch([taken, missing])

    assert found == {taken: b'{"type":"success"}'}
    waiting = (set(a.task_id for a in answers.values()) - {taken}).pop()
    assert redis_client.lrange("rq:queue:hard", 0, -1) == [waiting.encode()]


def test_it_still_dispatches_after_redis_forgot_its_scripts(redis_url, redis_client):
    store = _store(redis_url)
    store.submit([5000, 6000], ["a-client", "a-client"])
    redis_client.lpop("rq:queue:hard")
    redis_client.script_flush()  # what a Redis restart does to loaded scripts

    assert store.payloads_and_dispatch([]) == {}
    assert redis_client.llen("rq:queue:hard") == 1


def test_nothing_to_fetch_is_not_an_error_either(redis_url):
    payload = protocol.success("f" * 32, "120")
    store = _store(redis_url)
    store.redis.set(keys.payload("f" * 32), payload)
    assert store.payloads_and_dispatch(["f" * 32]) == {"f" * 32: payload}
