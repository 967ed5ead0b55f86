"""A job publishes its own end, one stream entry naming every task it computed."""

from redis import Redis
from rq import Queue, SimpleWorker

from jobs import events, keys
from jobs.routing import QUEUES
from jobs.rq_schema import SERIALIZER
from jobs.store import JobStore
from settings import Settings


def test_each_job_appends_one_finished_entry_naming_all_its_tasks(redis_url):
    redis = Redis.from_url(redis_url)
    store = JobStore(redis, Settings(redis_url=redis_url, soft_batch_size=50))
    cursor = store.events_cursor()
    answers = store.submit([3, 4, 5, 5000])
    SimpleWorker([Queue(name, connection=redis, serializer=SERIALIZER) for name in QUEUES], connection=redis,
                 serializer=SERIALIZER).work(burst=True)

    # This test's entries only: a work horse of an earlier test, killed with
    # its worker, may still end its job in the shared Redis.
    mine = {a.task_id for a in answers.values()}
    entries = [fields for _, fields in redis.xrange(keys.EVENTS_STREAM) if mine & set(events.task_ids_in(fields))]
    assert len(entries) == 2  # the batch of 3, 4, 5 and the job of 5000
    named = sorted(tuple(sorted(events.task_ids_in(fields))) for fields in entries)
    assert named == sorted([tuple(sorted(answers[n].task_id for n in (3, 4, 5))), (answers[5000].task_id,)])
    assert {fields[b"state"] for fields in entries} == {b"finished"}

    # The servers read one event per task out of them.
    _, found = store.read_events(cursor, block_ms=0)
    found = [e for e in found if e.task_id in mine]
    assert sorted(e.task_id for e in found) == sorted(mine)
    assert {e.state for e in found} == {"finished"}


def test_an_entry_with_a_single_id_is_read_too():
    assert events.task_ids_in({b"id": b"ab12", b"state": b"failed"}) == ["ab12"]
    assert events.task_ids_in({b"ids": b"ab12,cd34", b"state": b"finished"}) == ["ab12", "cd34"]
