"""What LaneWorker relies on in RQ: a real ``rq worker --burst`` run of an overrunning hard job.

LaneWorker ends an overrunning horse from ``wait_for_horse``, its one override
of RQ's horse watch. This fails if RQ stops watching the horse through that
method, or stops treating a killed horse as a failed job through
``handle_work_horse_killed`` and then ``handle_job_failure``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from jobs.store import JobStore
from settings import Settings
from tests.conftest import ROOT
from tests.jobs.recording_worker import CALLS

BIG = 20_000_000  # seconds of GMP, past a 1 s limit


def test_rq_watches_the_horse_through_wait_for_horse_and_fails_the_job_of_a_killed_horse(redis_client, redis_url):
    store = JobStore(redis_client, Settings(redis_url=redis_url, max_number=BIG, hard_timeout_s=1))
    task_id = store.submit([BIG])[BIG].task_id
    began = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "rq.cli", "worker", "hard", "--burst", "--url", redis_url,
         "--worker-class", "tests.jobs.recording_worker.RecordingLaneWorker"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True, timeout=60,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    took = time.monotonic() - began
    calls = [call.decode() for call in redis_client.lrange(CALLS, 0, -1)]
    assert "wait_for_horse" in calls
    assert calls[calls.index("wait_for_horse"):][-2:] == ["handle_work_horse_killed", "handle_job_failure"]
    state = store.states([task_id])[task_id]
    assert state.status == "failed" and state.error.code.value == "timeout"
    # Ended 0.5 s past its 1 s limit, not 60 s past it as RQ alone would.
    assert took < 15
