"""jobs/store.py on a real Redis, with a real worker where a job must end: what a client can rely on.

Written against behaviour (sharing, queue caps, lookups, expiry), not the
store's internals, which may change.
"""

from __future__ import annotations

import dataclasses

import pytest

from jobs.factorial import factorial_digits
from jobs.states import FINISHED, MISSING, QUEUED
from jobs.store import JobStore
from protocol import ErrorCode, ProtocolError
from server import connect_redis
from settings import Settings
from tests.helpers import wait_until

UNKNOWN = "0123456789abcdef0123456789abcdef"


def make_store(redis_url: str, **changes) -> JobStore:
    settings = dataclasses.replace(Settings(redis_url=redis_url), **changes)
    return JobStore(connect_redis(settings), settings)


def finished(store: JobStore, task_ids: list[str], timeout: float = 30):
    """Wait until every task has finished; return their states."""

    def all_finished():
        store.dispatch()  # no server runs here to feed the RQ queues from the pending lists
        states = store.states(task_ids)
        return states if all(v.status == FINISHED for v in states.values()) else None

    return wait_until(all_finished, timeout=timeout, what=f"{len(task_ids)} tasks to finish")


def test_identical_numbers_share_one_task_id_and_distinct_numbers_do_not(redis_url):
    store = make_store(redis_url)
    first = store.submit([5, 5, 7, 3000, 3000])
    assert set(first) == {5, 7, 3000}
    assert len({state.task_id for state in first.values()}) == 3
    assert (first[5].queue, first[7].queue, first[3000].queue) == ("soft", "soft", "hard")
    assert all(state.status == QUEUED for state in first.values())
    # Asked again later, from another connection: the same jobs.
    again = make_store(redis_url).submit([3000, 5])
    assert again[3000].task_id == first[3000].task_id and again[5].task_id == first[5].task_id


def test_a_stored_result_is_answered_at_once_by_the_same_task_id(redis_url, make_worker):
    store = make_store(redis_url)
    task_id = store.submit([20])[20].task_id
    worker = make_worker()
    finished(store, [task_id])
    worker.stop()
    # No worker now: an answer can only come from what is stored.
    answer = store.submit([20])[20]
    assert answer.task_id == task_id and answer.status == FINISHED
    assert answer.final_answer() == b'{"type":"success","task_id":"%s","result":"%s","digits":19}' % (
        task_id.encode(), factorial_digits(20).encode())


def test_a_full_queue_answers_busy_for_what_does_not_fit_and_takes_more_once_drained(redis_url, make_worker):
    store = make_store(redis_url, max_queue_length=2, soft_batch_size=1)
    answers = store.submit([1, 2, 3, 4])
    accepted = [n for n, a in answers.items() if not isinstance(a, ProtocolError)]
    refused = [a for a in answers.values() if isinstance(a, ProtocolError)]
    assert len(accepted) == 2 and len(refused) == 2
    assert all(err.code == ErrorCode.BUSY and "soft queue is full (2 jobs)" in err.text for err in refused)
    # The hard queue has its own cap, untouched by the soft one's.
    assert store.submit([5000])[5000].status == QUEUED
    # A number already queued is no new job: it is answered, not refused.
    assert store.submit([accepted[0]])[accepted[0]].status == QUEUED

    worker = make_worker()
    finished(store, [answers[n].task_id for n in accepted])
    wait_until(lambda: store.redis.llen("rq:queue:soft") == 0, timeout=20, what="the soft queue to drain")
    worker.stop()  # no worker now: the new jobs stay queued
    later = store.submit([3, 4])
    assert all(not isinstance(a, ProtocolError) and a.status == QUEUED for a in later.values())


def test_lookups_of_queued_finished_batched_and_unknown_tasks(redis_url, make_worker):
    store = make_store(redis_url, soft_batch_size=10)
    batch = store.submit([30, 31, 32])  # one batch job, three task ids
    assert len({a.task_id for a in batch.values()}) == 3
    ids = [batch[n].task_id for n in (30, 31, 32)]
    states = store.states(ids + [UNKNOWN])
    assert [states[t].status for t in ids] == [QUEUED] * 3 and all(states[t].queue == "soft" for t in ids)
    assert states[UNKNOWN].status == MISSING
    assert states[UNKNOWN].final_answer().code == ErrorCode.UNKNOWN_TASK_ID

    worker = make_worker()
    done = finished(store, ids)
    worker.stop()  # no worker now: the payloads below are what is stored
    assert [done[t].final_answer() for t in ids] == [store.payloads([t])[t] for t in ids]
    for number, task_id in zip((30, 31, 32), ids):
        assert f'"task_id":"{task_id}","result":"{factorial_digits(number)}"'.encode() in done[task_id].payload


def test_a_result_past_its_lifetime_is_unknown_and_the_number_gets_a_new_job(redis_url, make_worker):
    store = make_store(redis_url, result_ttl_s=1)
    task_id = store.submit([40])[40].task_id
    worker = make_worker()
    finished(store, [task_id])
    wait_until(lambda: store.states([task_id])[task_id].status == MISSING, timeout=10,
               what="the result to expire")
    worker.stop()  # no worker now: the number's new job stays queued
    assert store.payloads([task_id]) == {}
    fresh = store.submit([40])[40]
    assert fresh.status == QUEUED and fresh.task_id != task_id
