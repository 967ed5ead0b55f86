"""``rq worker soft hard`` loses nothing when killed: the project's worker and RQ's own, with real signals.

- The project's worker of both queues (``-w jobs.worker.LaneWorker``) never
  holds a job in no list: stopped while it waits, it is handed a job by Redis
  (seen in its taken list), killed, and started again: both jobs waiting for
  it are answered.
- A stock worker (RQ's own ``Worker``: no alive key) killed with its horse in
  the middle of a job: the janitor sees RQ's lease on the run lapse, and the
  job runs again on the next stock worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import pytest

from jobs import keys, lifecycle
from tests.helpers import Client, async_wait_until
from tests.helpers import child_pids as children
from tests.helpers import kill_quietly

log = logging.getLogger(__name__)
pytestmark = pytest.mark.slow

# A second or two of GMP work: still running when the worker is killed.
RERUN = 1_000_000
TRIES = 20


@pytest.fixture
def settings(make_settings):
    return make_settings(max_number=RERUN, hard_timeout_s=60)


def _worker_name(redis_client, before: set) -> str:
    [key] = {k.decode() for k in redis_client.smembers("rq:workers")} - before
    return key.removeprefix("rq:worker:")


def _blocked_in_blmove(redis_client) -> bool:
    """A client is blocked in Redis in a BLMOVE: the worker's wait for a job (the only one here)."""
    return any(c.get("cmd") == "blmove" and "b" in c.get("flags", "") for c in redis_client.client_list())


MISSED = "missed"


def _handed(redis_client, name: str, waiting: set[str]):
    """The jobs of ``waiting`` in the worker's taken list; MISSED if its wait ended with none of them."""
    blocked = _blocked_in_blmove(redis_client)  # read first: a job handed meanwhile is then in the list
    held = {j.decode() for j in redis_client.lrange(lifecycle.taken_key(name), 0, -1)} & waiting
    return held or (None if blocked else MISSED)


async def _until_end(client: Client, timeout: float) -> dict:
    while True:
        message = await client.receive(timeout)
        if message["type"] != "status":
            return message


async def _answers(client: Client, task_ids: set[str], timeout: float) -> dict[str, dict]:
    found: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while set(found) != task_ids:
        message = await _until_end(client, max(0.1, deadline - time.monotonic()))
        found[message["task_id"]] = message
    return found


@pytest.mark.gen_test(timeout=120)
async def test_the_project_worker_of_both_queues_killed_holding_a_job_it_never_started_loses_nothing(
        app, ws_url, redis_client, make_worker, tmp_path):
    before = {k.decode() for k in redis_client.smembers("rq:workers")}
    first = make_worker(log_path=tmp_path / "first.log")
    name = _worker_name(redis_client, before)
    client = await Client.connect(ws_url)
    for attempt in range(TRIES):
        # Stopped while Redis holds its blocking wait: Redis hands it the next job as if it ran.
        await async_wait_until(lambda: _blocked_in_blmove(redis_client), timeout=10, what="the worker's wait")
        os.kill(first.process.pid, signal.SIGSTOP)
        if not _blocked_in_blmove(redis_client):  # its wait had just ended: try again
            os.kill(first.process.pid, signal.SIGCONT)
            continue
        soft = await client.ask({"type": "factorial", "number": 10 + attempt})
        hard = await client.ask({"type": "factorial", "number": 5000 + attempt})
        assert (soft["queue"], hard["queue"]) == ("soft", "hard")
        waiting = {soft["task_id"], hard["task_id"]}
        held = await async_wait_until(lambda: _handed(redis_client, name, waiting), timeout=5,
                                      what="a job in the stopped worker's list, or its wait's end")
        if held != MISSED:
            break
        # Its wait ended before the jobs came: let it run them, and try again.
        os.kill(first.process.pid, signal.SIGCONT)
        await _answers(client, waiting, 30)
    else:
        raise AssertionError(f"the stopped worker was handed no job in {TRIES} tries")
    # Stopped, the worker could not have started it: the job is in its list, not in any other.
    [held_id] = held & waiting
    assert redis_client.zcard("rq:wip:soft") == redis_client.zcard("rq:wip:hard") == 0
    assert redis_client.hget(f"rq:job:{held_id}", "factorial_state") == b"queued"
    os.kill(first.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    first.process.wait()
    log.info("worker of both queues SIGKILLed holding job %s (%s) in its taken list", held_id,
             "soft" if held_id == soft["task_id"] else "hard")

    # Started again, as a supervisor would, a second later.
    await asyncio.sleep(max(killed + 1 - time.monotonic(), 0))  # a duration: the supervisor's restart delay
    make_worker(log_path=tmp_path / "second.log")
    answers = await _answers(client, waiting, 45)
    told_after = time.monotonic() - killed
    log.info("both jobs answered %.2f s after the kill", told_after)
    assert answers[soft["task_id"]]["type"] == answers[hard["task_id"]]["type"] == "success", answers
    assert told_after < 45
    assert redis_client.llen(lifecycle.taken_key(name)) == 0
    assert not redis_client.sismember(keys.BEATING_WORKERS, name)  # forgotten, holding nothing


@pytest.mark.gen_test(timeout=200)
async def test_a_stock_worker_killed_mid_job_with_its_horse_has_its_job_run_again_within_120_s(
        app, ws_url, redis_client, make_worker, tmp_path):
    stock = {"RQ_WORKER_CLASS": "rq.worker.Worker"}  # RQ's own, whatever the environment says
    before = {k.decode() for k in redis_client.smembers("rq:workers")}
    first = make_worker(worker_class=None, env=stock, log_path=tmp_path / "first.log")
    name = _worker_name(redis_client, before)
    client = await Client.connect(ws_url)
    ack = await client.ask({"type": "factorial", "number": RERUN})
    task_id = ack["task_id"]
    horses = await async_wait_until(
        lambda: redis_client.hget(f"rq:job:{task_id}", "factorial_state") == b"started"
        and children(first.process.pid), timeout=20, what="the job to start in a work horse")
    assert not redis_client.sismember(keys.BEATING_WORKERS, name)  # a stock worker: no alive key
    # The whole machine dies: the worker first (so it cannot report), then its horse.
    os.kill(first.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    first.process.wait()
    for horse in horses:
        kill_quietly(horse)
    await asyncio.sleep(max(killed + 1 - time.monotonic(), 0))  # a duration: the supervisor's restart delay
    make_worker(worker_class=None, env=stock, log_path=tmp_path / "second.log")

    done = await _until_end(client, 120)
    told_after = time.monotonic() - killed
    log.info("stock worker SIGKILLed with its horse during %d!: success %.1f s after the kill", RERUN, told_after)
    assert done["type"] == "success" and done["task_id"] == task_id, done
    assert told_after < 120
    # It ran again: the killed run, then the one that answered; the killed run's entry is gone.
    assert redis_client.hget(f"rq:job:{task_id}", "factorial_runs") == b"2"
    assert redis_client.zcard("rq:wip:hard") == 0


@pytest.mark.gen_test(timeout=90)
async def test_a_stock_workers_killed_horse_has_its_job_run_again(app, ws_url, redis_client, make_worker, tmp_path):
    # RQ fails the job ("Work-horse terminated unexpectedly") and runs no failure callback:
    # without the janitor its clients would wait for ever.
    stock = {"RQ_WORKER_CLASS": "rq.worker.Worker"}
    worker = make_worker(worker_class=None, env=stock, log_path=tmp_path / "worker.log")
    client = await Client.connect(ws_url)
    ack = await client.ask({"type": "factorial", "number": RERUN})
    task_id = ack["task_id"]
    [horse] = await async_wait_until(
        lambda: redis_client.hget(f"rq:job:{task_id}", "factorial_state") == b"started"
        and children(worker.process.pid), timeout=20, what="the job to start in a work horse")
    os.kill(horse, signal.SIGKILL)
    killed = time.monotonic()
    done = await _until_end(client, 60)
    told_after = time.monotonic() - killed
    log.info("stock worker's horse SIGKILLed during %d!: success %.1f s after the kill", RERUN, told_after)
    assert done["type"] == "success" and done["task_id"] == task_id, done
    assert told_after < 30
    assert redis_client.hget(f"rq:job:{task_id}", "factorial_runs") == b"2"
    assert redis_client.zcard("rq:failed:hard") == 0
