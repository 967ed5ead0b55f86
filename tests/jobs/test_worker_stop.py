"""A stop-job command that reaches a LaneWorker just after it forked its horse kills the horse only.

RQ's horse leaves the worker's process group (``os.setpgrp()``) as the first
thing it does after the fork, and RQ's ``kill_horse`` kills the horse's
group. A kill before the horse left would kill the worker's own group: the
worker, and whatever shares its group (a supervisor, a benchmark, a test
runner). Found by the abuse soak (``python -m bench -s abuse``), whose whole
process group died at once while a client cancelled jobs as they started.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import ROOT

# Runs in a session of its own, so that if the kill does hit its group, only it dies.
_STOP_RIGHT_AFTER_FORK = textwrap.dedent("""
    import signal, subprocess, sys
    from redis import Redis
    from jobs.worker import LaneWorker

    worker = LaneWorker(["hard"], connection=Redis.from_url(sys.argv[1]))
    # A horse between the fork and its setpgrp(): still in the worker's group.
    horse = subprocess.Popen(["sleep", "30"])
    worker._horse_pid = horse.pid
    worker.kill_horse(signal.SIGKILL)
    print("worker alive, horse ended by signal", -horse.wait(timeout=10), flush=True)
""")


def test_a_stop_before_the_horse_left_the_workers_group_kills_the_horse_only(redis_url):
    run = subprocess.run([sys.executable, "-c", _STOP_RIGHT_AFTER_FORK, redis_url], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, start_new_session=True)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert run.stdout.strip() == f"worker alive, horse ended by signal {int(9)}"
