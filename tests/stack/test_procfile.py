"""``honcho start`` brings up the whole stack from the Procfile, and stops it all."""

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from redis import Redis
from rq.worker import Worker

from tests.helpers import Client, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)


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
    # honcho starts each process in a session of its own: stop it with SIGTERM
    # so that it stops them, then kill whatever of this stack is left.
    if honcho.poll() is None:
        os.killpg(honcho.pid, signal.SIGTERM)
        try:
            honcho.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait()
    for pid in _processes_with(f"REDIS_DATA_DIR={tmp_path / 'redis'}"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _processes_with(variable: str) -> list[int]:
    """The processes whose environment holds ``variable`` (NAME=value): one stack's, as the tests start them."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and variable.encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.gen_test(timeout=60)
async def test_honcho_start_serves_factorials_and_the_dashboard_then_stops_cleanly(stack):
    ports, honcho = stack
    wait_until(lambda: _http_ok(f"http://127.0.0.1:{ports['web']}/healthz"), timeout=30,
               what="the web process, with Redis")
    wait_until(lambda: _http_ok(f"http://127.0.0.1:{ports['dashboard']}/"), timeout=30, what="rq-dashboard")

    # Two workers, one per queue: a small job never waits behind a long hard
    # one, and a job a worker takes stays in a list until it starts.
    redis = Redis.from_url(f"redis://127.0.0.1:{ports['redis']}/0")
    wait_until(lambda: len(redis.smembers("rq:workers")) == 2, timeout=30, what="both workers to register")
    queues = sorted(Worker.find_by_key(key.decode(), connection=redis).queue_names()
                    for key in redis.smembers("rq:workers"))
    assert queues == [["hard"], ["soft"]]

    client = await Client.connect(f"ws://127.0.0.1:{ports['web']}/ws")
    ack, done = await client.factorial(5, timeout=30)
    assert ack["queue"] == "soft" and done["result"] == 120
    client.close()

    # The supervised processes run in sessions of their own: they must stop too.
    supervised = [wait_until(lambda: _pid_of("server.py", ports["web"]), what="the server process"),
                  *_worker_pids(redis)]
    os.killpg(honcho.pid, signal.SIGTERM)
    honcho.wait(20)
    wait_until(lambda: not _group_alive(honcho.pid), timeout=20, what="every process of the stack to stop")
    wait_until(lambda: not any(_alive(pid) for pid in supervised), timeout=20, what="the supervised processes to stop")
    wait_until(lambda: not [pid for pid in _processes_with(f"SERVER_PORT={ports['web']}") if _alive(pid)], timeout=20,
               what="every process of the stack to stop")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pid_of(script: str, port: int) -> int | None:
    """The process running ``script`` with SERVER_PORT=port (other stacks may run on this machine)."""
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit():
                continue
            cmdline = (entry / "cmdline").read_bytes()
            if script.encode() not in cmdline or b"stack.supervise" in cmdline:
                continue
            if f"SERVER_PORT={port}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                return int(entry.name)
        except OSError:
            continue
    return None


def _worker_pids(redis: Redis) -> list[int]:
    return [int(redis.hget(key, "pid")) for key in redis.smembers("rq:workers")]


def _soft_only_worker_pids(redis: Redis) -> set[int]:
    """Including a killed worker's: RQ keeps its entry until its heartbeat expires."""
    return {int(redis.hget(key, "pid")) for key in redis.smembers("rq:workers") if redis.hget(key, "queues") == b"soft"}


@pytest.mark.slow
@pytest.mark.gen_test(timeout=90)
async def test_a_crashed_worker_or_server_is_restarted_and_the_stack_keeps_running(stack):
    ports, honcho = stack
    web_url = f"http://127.0.0.1:{ports['web']}/"
    # /healthz is 200 once the server reaches Redis, which starts alongside it.
    wait_until(lambda: _http_ok(web_url + "healthz"), timeout=30, what="the web process, with Redis")
    redis = Redis.from_url(f"redis://127.0.0.1:{ports['redis']}/0")
    wait_until(lambda: len(redis.smembers("rq:workers")) == 2, timeout=30, what="both workers to register")

    [crashed] = _soft_only_worker_pids(redis)
    os.kill(crashed, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: _soft_only_worker_pids(redis) - {crashed}, timeout=20, what="a new soft worker")
    worker_back = time.monotonic() - killed

    # The whole server crashes: its main process and the processes it forked (one group).
    server = wait_until(lambda: _pid_of("server.py", ports["web"]), what="the server process")
    os.killpg(os.getpgid(server), signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: not _alive(server), timeout=10, what="the killed server to be gone")
    wait_until(lambda: _pid_of("server.py", ports["web"]) and _http_ok(web_url + "healthz"), timeout=20, what="a new server")
    server_back = time.monotonic() - killed
    log.info("under honcho: a SIGKILLed worker registered again after %.1f s, a SIGKILLed server served again "
             "after %.1f s", worker_back, server_back)

    assert honcho.poll() is None
    client = await Client.connect(f"ws://127.0.0.1:{ports['web']}/ws")
    ack, done = await client.factorial(6, timeout=30)
    assert done["result"] == 720
    client.close()
