"""In the project, ``rq worker soft hard`` runs the project's worker on the project's Redis.

The project's ``.env``, which honcho reads for every process it starts, sets
RQ_WORKER_CLASS and RQ_CONFIG, both read by RQ's command line; the config
module (stack/rq_config.py) connects as settings.py says, password included.
Real honcho, real ``rq worker``, a real redis-server that wants a password.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from honcho.environ import parse
from redis import Redis

from jobs import keys
from stack.redis import server_binary, server_command
from tests.conftest import ROOT
from tests.helpers import free_port, stop_process, wait_until
from tests.stack.test_procfile import _processes_with

SECRET = "s3cret-pw"


@pytest.fixture
def redis_with_password(tmp_path):
    port = free_port()
    (tmp_path / "redis").mkdir()
    server = subprocess.Popen(server_command(port, tmp_path / "redis", append_only=False)
                              + ["--requirepass", SECRET], stdout=subprocess.DEVNULL)
    client = Redis(port=port, password=SECRET, socket_connect_timeout=0.5)
    wait_until(lambda: _pings(client), timeout=10, what="redis-server with a password")
    yield f"redis://:{SECRET}@127.0.0.1:{port}/0", client
    client.close()
    stop_process(server)


def _pings(client: Redis) -> bool:
    try:
        return client.ping()
    except Exception:
        return False


@pytest.fixture
def honcho(tmp_path):
    """Runs ``python -m honcho ARGS`` in the project; stops it, and every process it started, at the end."""
    marker = f"FACTORIAL_TEST_HONCHO={tmp_path}"
    started: list[subprocess.Popen] = []

    def run(args: list[str], environ: dict[str, str]) -> subprocess.Popen:
        # None of RQ's or the project's Redis variables but those given: the .env file adds RQ's.
        env = {name: value for name, value in os.environ.items() if not name.startswith(("RQ_", "REDIS_"))}
        env.update({"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
                    **environ, marker.split("=")[0]: str(tmp_path)})
        process = subprocess.Popen([sys.executable, "-m", "honcho", *args], cwd=ROOT, env=env,
                                   start_new_session=True, stdout=open(tmp_path / "honcho.log", "ab"),
                                   stderr=subprocess.STDOUT)
        started.append(process)
        return process

    yield run
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(20)
    for pid in _processes_with(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _lane_workers(client: Redis) -> dict[str, dict]:
    """The registered workers that keep an alive key (jobs/liveness.py): the project's LaneWorkers."""
    found = {}
    for key in client.smembers("rq:workers"):
        name = key.decode().removeprefix("rq:worker:")
        if client.sismember(keys.BEATING_WORKERS, name) and client.exists(keys.worker_alive(name)):
            found[name] = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
    return found


def test_the_env_file_sets_rqs_worker_class_and_config_module_and_honcho_reads_it_by_default():
    assert parse((ROOT / ".env").read_text()) == {"RQ_WORKER_CLASS": "jobs.worker.LaneWorker",
                                                  "RQ_CONFIG": "stack.rq_config"}
    from honcho.command import parser

    assert parser.parse_args(["run", "true"]).env == ".env"


@pytest.fixture
def sentinel(redis_with_password, tmp_path):
    """A Sentinel watching that Redis as primary "main": reachable only through the project's settings."""
    url, client = redis_with_password
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                      f"sentinel monitor main 127.0.0.1 {client.connection_pool.connection_kwargs['port']} 1\n"
                      f"sentinel auth-pass main {SECRET}\n")
    process = subprocess.Popen([server_binary(), str(config), "--sentinel"], stdout=subprocess.DEVNULL)
    asking = Redis(port=port, socket_connect_timeout=0.5)
    wait_until(lambda: _pings(asking) and asking.sentinel_get_master_addr_by_name("main"), timeout=10,
               what="the Sentinel")
    yield port
    asking.close()
    stop_process(process)


@pytest.mark.slow
@pytest.mark.parametrize("through", ["url", "sentinel"])
def test_rq_worker_soft_hard_under_honcho_runs_the_project_worker_on_the_redis_the_environment_names(
        redis_with_password, honcho, request, through):
    url, client = redis_with_password
    environ = {"REDIS_URL": url}
    if through == "sentinel":
        # RQ's own reading of the environment (REDIS_URL, with no host) would find no Redis:
        # the worker gets there only through RQ_CONFIG (stack/rq_config.py, settings.py).
        environ = {"REDIS_URL": f"redis://:{SECRET}@/0", "REDIS_SENTINEL_MASTER": "main",
                   "REDIS_SENTINELS": f"127.0.0.1:{request.getfixturevalue('sentinel')}"}
    honcho(["run", "rq", "worker", "soft", "hard"], environ)
    workers = wait_until(lambda: _lane_workers(client), timeout=30, what="a LaneWorker to register")
    [(name, worker)] = workers.items()
    assert worker["queues"] == "soft,hard"
    # The password came from the environment (REDIS_URL), never from the command line.
    with open(f"/proc/{worker['pid']}/cmdline", "rb") as cmdline:
        words = cmdline.read().split(b"\0")
    assert b"worker" in words and b"--url" not in words and SECRET.encode() not in b" ".join(words)


@pytest.mark.slow
def test_the_procfile_workers_get_the_env_files_settings(redis_with_password, honcho):
    url, client = redis_with_password
    honcho(["start", "soft_worker", "hard_worker"], {"REDIS_URL": url})
    workers = wait_until(lambda: len(found := _lane_workers(client)) == 2 and found, timeout=30,
                         what="the Procfile's two workers to register")
    assert sorted(w["queues"] for w in workers.values()) == ["hard", "soft"]
    for worker in workers.values():
        environ = dict(item.split(b"=", 1) for item in Path(f"/proc/{worker['pid']}/environ").read_bytes()
                       .split(b"\0") if b"=" in item)
        assert environ[b"RQ_WORKER_CLASS"] == b"jobs.worker.LaneWorker"
        assert environ[b"RQ_CONFIG"] == b"stack.rq_config"
