"""Fixtures: a real redis-server, real ``rq worker`` processes, and the app served on a free port."""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.request
import sys
from pathlib import Path

import pytest
from redis import Redis

from jobs.rq_schema import SERIALIZER_PATH
from server import make_app
from settings import Settings
from stack.redis import server_command
from tests.helpers import child_pids, free_port, kill_quietly, stop_process, wait_until

ROOT = Path(__file__).resolve().parent.parent


class RedisServer:
    """A redis-server on a free port of 127.0.0.1, in a folder of its own."""

    def __init__(self, data_dir: Path, append_only: bool = False):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.data_dir = data_dir
        self.append_only = append_only
        self.process: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            server_command(self.port, self.data_dir, append_only=self.append_only),
            stdout=subprocess.DEVNULL,
        )
        client = Redis.from_url(self.url, socket_connect_timeout=0.2)
        wait_until(lambda: _pings(client), timeout=10, what=f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.process:
            stop_process(self.process)


def _pings(client: Redis) -> bool:
    try:
        return client.ping()
    except Exception:
        return False


class WorkerProcess:
    """A real ``rq worker soft hard`` subprocess (or of other ``queues``)."""

    def __init__(self, redis_url: str, worker_class: str | None = "jobs.worker.LaneWorker", extra_env=None,
                 queues: tuple[str, ...] = ("soft", "hard"), log_path: Path | None = None, new_session: bool = False):
        self.redis_url = redis_url
        self.worker_class = worker_class
        self.queues = queues
        self.log_path = log_path  # the worker's output, for tests that read it when they fail
        self.extra_env = extra_env or {}
        # In a session of its own, as honcho and systemd run it: a signal it sends to its own process group
        # (RQ kills a horse's group) reaches no one else, the test least of all.
        self.new_session = new_session
        self.process: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        before = set(_worker_keys(self.redis_url))
        # As the Procfile runs it: jobs are JSON (jobs.rq_schema), for RQ's own worker too.
        command = [sys.executable, "-m", "rq.cli", "worker", *self.queues, "--url", self.redis_url,
                   "--serializer", SERIALIZER_PATH]
        if self.worker_class:
            command += ["--worker-class", self.worker_class]
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.extra_env}
        output = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                                        start_new_session=self.new_session)
        if self.log_path:
            output.close()
        wait_until(lambda: set(_worker_keys(self.redis_url)) - before or self.process.poll() is not None,
                   timeout=20, what="the rq worker to register")
        assert self.process.poll() is None, "rq worker exited at start"
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _worker_keys(redis_url: str) -> list:
    return Redis.from_url(redis_url).smembers("rq:workers")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """A clean database on the session's Redis, flushed before and after the test."""
    client = Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    client.flushall()


@pytest.fixture
def redis_client(redis_url):
    client = Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def worker(make_worker):
    return make_worker()


@pytest.fixture
def make_worker(redis_url):
    """Start a real ``rq worker`` (of ``queues``, ``worker_class``, with ``env`` added to its environment; on the
    test's Redis unless ``url``); every one started, and any work horse it left, is stopped after the test."""
    started: list[WorkerProcess] = []

    def make(queues: tuple[str, ...] = ("soft", "hard"), worker_class: str | None = "jobs.worker.LaneWorker",
             env: dict | None = None, log_path: Path | None = None, url: str | None = None,
             new_session: bool = False) -> WorkerProcess:
        worker = WorkerProcess(url or redis_url, worker_class=worker_class, extra_env=env, queues=queues,
                               log_path=log_path, new_session=new_session)
        started.append(worker)  # before start: a worker that fails to register is stopped too
        return worker.start()

    yield make
    with contextlib.ExitStack() as stopping:  # every stop runs, even if one raises
        for worker in started:
            stopping.callback(_stop_worker_and_horses, worker)


def _stop_worker_and_horses(worker: WorkerProcess) -> None:
    # A killed worker's horse lives on (its parent is gone): it is killed too.
    alive = worker.process is not None and worker.process.poll() is None
    horses = child_pids(worker.process.pid) if alive else []
    worker.stop()
    for pid in horses:
        kill_quietly(pid)


# The settings every test server runs with: results delivered and jobs swept quickly.
TEST_SETTINGS = {"delivery_wait_ms": 20, "sweep_interval_s": 0.2}


@pytest.fixture
def make_settings(redis_url):
    """Settings for the test's Redis with ``TEST_SETTINGS`` and these overrides."""

    def make(**overrides) -> Settings:
        return Settings(**{"redis_url": redis_url, **TEST_SETTINGS, **overrides})

    return make


@pytest.fixture
def settings(make_settings, request):
    """The in-process app's settings; a test changes them with
    ``@pytest.mark.parametrize("settings", [{"max_in_flight": 3}], indirect=True)``."""
    return make_settings(**getattr(request, "param", {}))


@pytest.fixture
def app(settings, io_loop):
    application = make_app(settings)
    application.context.delivery.start()
    yield application
    application.context.delivery.stop()
    application.context.jobs.close()


@pytest.fixture
def ws_url(http_server, base_url):
    return base_url.replace("http://", "ws://") + "/ws"


class ServedApp:
    """``python server.py`` as a subprocess on a free port, as it runs in production."""

    def __init__(self, redis_url: str, port: int | None = None, **env):
        self.redis_url = redis_url
        self.port = port or free_port()
        self.http_url = f"http://localhost:{self.port}"
        self.ws_url = f"ws://localhost:{self.port}/ws"
        self.env = {"REDIS_URL": redis_url, "SERVER_PORT": str(self.port), "SERVER_HOST": "localhost",
                    "DELIVERY_WAIT_MS": "20", "SWEEP_INTERVAL_S": "0.2", "LOG_LEVEL": "WARNING",
                    # One process, so /metrics and the memory figures are the whole server's.
                    "WEB_PROCESSES": "1",
                    **{name.upper(): str(value) for name, value in env.items()}}
        self.process: subprocess.Popen | None = None

    def start(self) -> "ServedApp":
        self.process = subprocess.Popen([sys.executable, "server.py"], cwd=ROOT, env={**os.environ, **self.env},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self._answers() or self.process.poll() is not None, timeout=20,
                   what=f"the server on port {self.port}")
        assert self.process.poll() is None, "server.py exited at start"
        return self

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def rss_kib(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

    def stop(self) -> None:
        if self.process:
            stop_process(self.process)


@pytest.fixture
def served_app(make_server):
    return make_server()


@pytest.fixture
def make_server(redis_url):
    """Start ``python server.py`` (on the test's Redis unless ``url``) with these settings, as ServedApp takes
    them (``max_number=5``); every one started is stopped after the test."""
    started: list[ServedApp] = []

    def make(url: str | None = None, **settings) -> ServedApp:
        server = ServedApp(url or redis_url, **settings)
        started.append(server)  # before start: one that never answers is stopped too
        return server.start()

    yield make
    with contextlib.ExitStack() as stopping:
        for server in started:
            stopping.callback(server.stop)


def pytest_configure(config):
    config.addinivalue_line("markers", "foreign_websocket_peer: the test's WebSocket peer is not the service "
                                       "(plain Tornado pinning its own behaviour): its frames are not checked")


# Fixtures that start a Redis, a worker, a server or another process (here or in a
# test module): a test that uses one, even through another fixture, is ``integration``.
INTEGRATION_FIXTURES = frozenset({
    "redis_server", "redis_url", "redis_client", "own_redis", "primary_and_replica", "secure_redis",
    "redis_with_password", "sentinel", "worker", "workers", "lane_worker",
    "app", "http_server", "ws_url", "served_app", "server", "servers",
    "flooding_port", "plain_tornado_url", "scripted_url",
    "stack", "honcho", "dashboard", "browser", "page", "certificate", "clients", "frozen",
    "make_worker", "make_server", "make_settings",
})
# Folders whose every test drives processes, namespaces, browsers or clusters.
INTEGRATION_FOLDERS = ("multihost", "deploy", "stack", "static", "faults", "bench", "client")


def pytest_collection_modifyitems(config, items):
    """Mark ``integration`` every test that needs Redis or processes: ``-m "not integration"`` is the fast loop."""
    tests = Path(__file__).resolve().parent
    for item in items:
        folder = Path(str(item.fspath)).resolve().relative_to(tests).parts[0]
        if folder in INTEGRATION_FOLDERS or INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def contract_checked(request):
    """Every WebSocket frame and HTTP response a test's clients see must be one docs/asyncapi.yaml or
    docs/openapi.yaml describes (tests/contract/wire.py); the test fails otherwise."""
    from tests.contract import wire

    wire.install()
    wire.checking_websockets = not (request.node.get_closest_marker(wire.FOREIGN_PEER_MARKER)
                                    or wire.FOREIGN_PEER_FIXTURES & set(request.fixturenames))
    seen = len(wire.VIOLATIONS)
    yield
    wire.checking_websockets = True
    violations = wire.VIOLATIONS[seen:]
    del wire.VIOLATIONS[seen:]
    assert not violations, "outside the contract documents:\n" + "\n".join(violations[:20])
