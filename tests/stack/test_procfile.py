"""``honcho start`` brings up the whole stack from the Procfile, and stops it all."""

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from redis import Redis
from rq.worker import Worker

from tests.helpers import Client, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            return reply.status == 200
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture
def stack(tmp_path):
    ports = {"redis": free_port(), "web": free_port(), "dashboard": free_port()}
    env = {
        **os.environ,
        # The Procfile runs "python", "rq" and "rq-dashboard": this environment's.
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
        "REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
        "REDIS_DATA_DIR": str(tmp_path / "redis"),
        "SERVER_PORT": str(ports["web"]),
        "RQ_DASHBOARD_PORT": str(ports["dashboard"]),
    }
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "start"], cwd=ROOT, env=env, start_new_session=True,
        stdout=open(tmp_path / "honcho.log", "wb"), stderr=subprocess.STDOUT,
    )
    yield ports, honcho
    if _group_alive(honcho.pid):
        os.killpg(honcho.pid, signal.SIGKILL)
    honcho.wait()


@pytest.mark.slow
@pytest.mark.gen_test(timeout=60)
async def test_honcho_start_serves_factorials_and_the_dashboard_then_stops_cleanly(stack):
    ports, honcho = stack
    wait_until(lambda: _http_ok(f"http://127.0.0.1:{ports['web']}/"), timeout=30, what="the web process")
    wait_until(lambda: _http_ok(f"http://127.0.0.1:{ports['dashboard']}/"), timeout=30, what="rq-dashboard")

    # Two workers: one for both queues, one for soft jobs only, so a small job
    # never waits behind a long hard one.
    redis = Redis.from_url(f"redis://127.0.0.1:{ports['redis']}/0")
    wait_until(lambda: len(redis.smembers("rq:workers")) == 2, timeout=30, what="both workers to register")
    queues = sorted(Worker.find_by_key(key.decode(), connection=redis).queue_names() == ["soft"]
                    for key in redis.smembers("rq:workers"))
    assert queues == [False, True]

    client = await Client.connect(f"ws://127.0.0.1:{ports['web']}/ws")
    ack, done = await client.factorial(5, timeout=30)
    assert ack["queue"] == "soft" and done["result"] == 120
    client.close()

    os.killpg(honcho.pid, signal.SIGTERM)
    honcho.wait(20)
    wait_until(lambda: not _group_alive(honcho.pid), timeout=20, what="every process of the stack to stop")
