"""Time limits and dead workers, as the client sees them: real rq workers, killed with real signals.

20,000,000! keeps GMP busy for about 5 s in C code, where RQ's SIGALRM time
limit cannot reach it; these tests give it a limit of a second or two.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from jobs.janitor import WORKER_LOST_REASON
from settings import Settings
from tests.conftest import WorkerProcess
from tests.helpers import Client, async_wait_until, wait_until
from tests.helpers import child_pids as children
from tests.helpers import kill_quietly as _kill

log = logging.getLogger(__name__)
BIG = 20_000_000
# A few seconds of work for a paused horse to finish once resumed.
PAUSED = 2_000_000
WORKER_LOST_TEXT = f"the job failed: {WORKER_LOST_REASON}"

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(redis_url, request):
    hard_timeout_s = getattr(request, "param", 1)
    return Settings(redis_url=redis_url, delivery_wait_ms=20, sweep_interval_s=0.2,
                    max_number=BIG, hard_timeout_s=hard_timeout_s)


@pytest.fixture
def lane_worker(redis_url):
    process = WorkerProcess(redis_url).start()
    yield process
    process.stop()
    for pid in children(process.process.pid):
        _kill(pid)


async def _until_end(client: Client, timeout: float) -> dict:
    """The first message that is not a status push."""
    while True:
        message = await client.receive(timeout)
        if message["type"] != "status":
            return message


async def _started(client: Client, timeout: float = 20) -> dict:
    message = await client.receive(timeout)
    assert message == {**message, "type": "status", "status": "started"}, message
    return message


@pytest.mark.gen_test(timeout=60)
async def test_a_hard_job_past_its_time_limit_reaches_its_client_as_timeout(ws_url, lane_worker, redis_client):
    client = await Client.connect(ws_url)
    ack = await client.ask({"type": "factorial", "number": BIG})
    assert ack["queue"] == "hard"
    await _started(client)
    started = time.monotonic()
    error = await _until_end(client, 10)
    told_after = time.monotonic() - started
    log.info("20000000! with a 1 s limit: client told after %.2f s", told_after)
    assert error == {"type": "error", "code": "timeout", "result": "Timeout error", "task_id": ack["task_id"]}
    assert told_after < 1 + 2
    # The horse is gone and the worker takes the next job at once.
    assert not children(lane_worker.process.pid)
    freed = time.monotonic()
    _, done = await client.factorial(3000, timeout=10)
    while done["type"] == "status":
        done = await client.receive(10)
    assert done["type"] == "success" and done["digits"] == 9131
    log.info("next hard job answered %.2f s after the timeout", time.monotonic() - freed)
    # The failure is stored as a timeout too, for later lookups.
    again = await client.ask({"type": "result", "task_id": ack["task_id"]})
    assert again["code"] == "timeout"


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("settings", [10], indirect=True)
async def test_a_killed_work_horse_is_reported_at_once(settings, ws_url, lane_worker):
    client = await Client.connect(ws_url)
    ack = await client.ask({"type": "factorial", "number": BIG})
    await _started(client)
    horse = wait_until(lambda: children(lane_worker.process.pid), timeout=5, what="the work horse")[0]
    killed = time.monotonic()
    os.kill(horse, signal.SIGKILL)
    error = await _until_end(client, 10)
    told_after = time.monotonic() - killed
    log.info("work horse SIGKILLed during 20000000!: client told after %.2f s", told_after)
    assert error["type"] == "error" and error["code"] == "job_failed" and error["task_id"] == ack["task_id"]
    assert "terminated" in error["result"]
    # Well inside the 10 s limit: the worker's parent published the failure.
    assert told_after < 2
    _, done = await client.factorial(2500, timeout=10)
    while done["type"] == "status":
        done = await client.receive(10)
    assert done["type"] == "success"


@pytest.mark.gen_test(timeout=90)
@pytest.mark.parametrize("settings", [60], indirect=True)
async def test_a_killed_worker_is_reported_within_seconds_whatever_its_time_limit(
        settings, app, ws_url, redis_url, lane_worker, redis_client):
    client = await Client.connect(ws_url)
    ack = await client.ask({"type": "factorial", "number": BIG})
    await _started(client)
    # The whole machine dies: the worker first (so it cannot report), then its horse.
    horses = children(lane_worker.process.pid)
    lane_worker.process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    lane_worker.process.wait()
    for horse in horses:
        _kill(horse)
    # A job accepted while no worker runs waits for the next one.
    other = await Client.connect(ws_url)
    queued = await other.ask({"type": "factorial", "number": 4000})
    assert queued["status"] == "queued"

    error = await _until_end(client, 15)
    told_after = time.monotonic() - killed
    log.info("whole worker SIGKILLed during 20000000! (limit 60 s): client told %.2f s after the kill", told_after)
    assert error == {"type": "error", "code": "job_failed", "result": WORKER_LOST_TEXT, "task_id": ack["task_id"]}
    assert told_after < 10
    # The failure is in Redis, as RQ records one, not only in what the server said.
    assert redis_client.hget(f"rq:job:{ack['task_id']}", "status") == b"failed"
    assert redis_client.zcard("rq:wip:hard") == 0

    # A new request for the same number does not share the dead job.
    retry = await client.ask({"type": "factorial", "number": BIG, "ref": "again"})
    assert retry["task_id"] != ack["task_id"] and retry["status"] == "queued"

    replacement = WorkerProcess(redis_url).start()
    try:
        done = await _until_end(other, 20)
        assert done["type"] == "success" and done["task_id"] == queued["task_id"]
        await async_wait_until(lambda: app.context.delivery.waiting_jobs <= 1, what="the queued job to be delivered")
    finally:
        replacement.stop()
        for pid in children(replacement.process.pid):
            _kill(pid)


@pytest.mark.gen_test(timeout=90)
@pytest.mark.parametrize("settings", [60], indirect=True)
async def test_a_paused_worker_is_reported_within_seconds_and_goes_on_when_resumed(
        settings, ws_url, lane_worker, redis_client):
    client = await Client.connect(ws_url)
    ack = await client.ask({"type": "factorial", "number": PAUSED})
    await _started(client)
    # The whole worker pauses (a frozen container or VM): its main process and its horse.
    paused = [lane_worker.process.pid, *children(lane_worker.process.pid)]
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        error = await _until_end(client, 15)
        told_after = time.monotonic() - stopped
    finally:
        for pid in paused:
            _kill(pid, signal.SIGCONT)
    log.info("worker SIGSTOPped during %d!: client told %.2f s after the pause", PAUSED, told_after)
    assert error == {"type": "error", "code": "job_failed", "result": WORKER_LOST_TEXT, "task_id": ack["task_id"]}
    assert told_after < 10

    # Resumed, the same worker process goes on with the queue.
    _, done = await client.factorial(2600, timeout=60)
    while done["type"] == "status":
        done = await client.receive(60)
    assert done["type"] == "success" and done["digits"] == 7752
    assert lane_worker.process.poll() is None
    # One answer per request: the paused job's late end is not sent again.
    again = await client.ask({"type": "factorial", "number": 5, "ref": "last"})
    assert again["type"] == "result" and again["ref"] == "last"
