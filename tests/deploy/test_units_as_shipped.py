"""Each systemd unit of deploy/systemd/ started the way systemd starts it, and the other deploy files run
by the programs they are for.

A unit runs its ``ExecStart`` in its ``WorkingDirectory`` with the variables of
its ``EnvironmentFile`` (deploy/systemd/env.example, its ports pointed at free
ones) and ``Environment=`` lines, systemd's default PATH, no activated
virtualenv, and, when the test runs as root, as an unprivileged user (``nobody``:
the units' ``factorial`` user is an installation's). /opt/factorial is this tree
and its .venv the interpreter's. Together they must reach ready: Redis answers,
each worker registers for its queue, the server's /healthz is 200, the
dashboard serves.
"""

from __future__ import annotations

import configparser
import os
import pwd
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from redis import Redis

from tests.helpers import free_port, stop_process, wait_until

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
# What systemd gives a service (systemd.exec(5), "Environment variables in spawned processes").
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INSTALLED_ROOT = "/opt/factorial"
ORDER = ["factorial-redis", "factorial-soft-worker", "factorial-hard-worker", "factorial-web", "factorial-dashboard"]


def service_section(name: str):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNITS / f"{name}.service")
    return parser["Service"]


def env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


def installed(text: str) -> str:
    """A path of the installation, as this tree and its virtualenv."""
    return (text.replace(f"{INSTALLED_ROOT}/.venv/bin/", f"{Path(sys.executable).parent}/")
            .replace(INSTALLED_ROOT, str(ROOT)))


class Unit:
    def __init__(self, name: str, environment: dict[str, str], user: pwd.struct_passwd | None, log: Path):
        self.name = name
        service = service_section(name)
        self.argv = installed(service["ExecStart"]).split()
        self.cwd = installed(service["WorkingDirectory"])
        assert service["EnvironmentFile"] == "/etc/factorial/env"  # deploy/systemd/env.example installed there
        env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8", **environment}
        for line in service.get("Environment", "").split("\n"):
            if "=" in line:
                key, value = line.split("=", 1)
                env[key] = environment.get(key, value)  # the test's own data folder wins
        if user is not None:
            env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name, SHELL=user.pw_shell)
        self.env = env
        self.user = user
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> "Unit":
        output = open(self.log, "wb")
        extra = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []} if self.user else {}
        self.process = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=output,
                                        stderr=subprocess.STDOUT, **extra)
        output.close()
        return self

    def alive(self) -> bool:
        return self.process.poll() is None

    def why(self) -> str:
        return f"{self.name} ({' '.join(self.argv)}) exited with {self.process.poll()}: {self.log.read_text()[-2000:]}"

    def stop(self) -> None:
        if self.process:
            stop_process(self.process)


def answers(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def pings(url: str) -> bool:
    try:
        return Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except Exception:
        return False


@pytest.fixture
def as_user(tmp_path):
    """The unprivileged user the units run as, when this test can switch to one (it runs as root)."""
    if os.getuid() != 0:
        return None
    user = pwd.getpwnam("nobody")
    try:
        # The interpreter may live where that user cannot reach (a root-only pyenv, say).
        subprocess.run([sys.executable, "-c", "import tornado, rq"], cwd=ROOT, user=user.pw_uid, group=user.pw_gid,
                       extra_groups=[], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError):
        return None
    tmp_path.chmod(0o755)
    return user


@pytest.mark.slow
def test_every_unit_reaches_ready_as_systemd_starts_it(tmp_path, as_user):
    names = sorted(path.stem for path in UNITS.glob("*.service"))
    assert names == sorted(ORDER), "a new unit needs its readiness check here"
    redis_port, web_port, dashboard_port = free_port(), free_port(), free_port()
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    if as_user:
        os.chown(data_dir, as_user.pw_uid, as_user.pw_gid)
    shipped = env_file(UNITS / "env.example")
    environment = {**shipped, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "SERVER_PORT": str(web_port),
                   "RQ_DASHBOARD_PORT": str(dashboard_port), "REDIS_DATA_DIR": str(data_dir)}
    assert set(shipped) <= set(environment)
    redis_url = environment["REDIS_URL"]
    units = {name: Unit(name, environment, as_user, tmp_path / f"{name}.log") for name in ORDER}
    try:
        redis = units["factorial-redis"].start()
        wait_until(lambda: pings(redis_url) or not redis.alive(), timeout=20, what="the Redis unit")
        assert redis.alive(), redis.why()

        client = Redis.from_url(redis_url)
        for queue, name in (("soft", "factorial-soft-worker"), ("hard", "factorial-hard-worker")):
            worker = units[name].start()
            wait_until(lambda: _has_worker(client, queue) or not worker.alive(), timeout=30, what=name)
            assert worker.alive(), worker.why()

        web = units["factorial-web"].start()
        wait_until(lambda: answers(f"http://127.0.0.1:{web_port}/healthz") == 200 or not web.alive(),
                   timeout=30, what="the web unit's /healthz")
        assert web.alive(), web.why()

        dashboard = units["factorial-dashboard"].start()
        wait_until(lambda: answers(f"http://127.0.0.1:{dashboard_port}/") == 200 or not dashboard.alive(),
                   timeout=30, what="the dashboard unit")
        assert dashboard.alive(), dashboard.why()
        if as_user:
            for unit in units.values():
                assert Path(f"/proc/{unit.process.pid}").stat().st_uid == as_user.pw_uid, unit.name
    finally:
        for name in reversed(ORDER):
            units[name].stop()


def _has_worker(client: Redis, queue: str) -> bool:
    from rq import Worker

    return any(queue in worker.queue_names() for worker in Worker.all(connection=client))


def test_the_dashboard_runs_without_rq_dashboard_on_path(redis_url):
    """python -m stack.dashboard with the virtualenv's interpreter, as systemd runs it, finds rq-dashboard."""
    port = free_port()
    env = {"PATH": SYSTEMD_PATH, "REDIS_URL": redis_url, "RQ_DASHBOARD_PORT": str(port)}
    assert shutil.which("rq-dashboard", path=SYSTEMD_PATH) is None or "venv" not in shutil.which(
        "rq-dashboard", path=SYSTEMD_PATH)
    process = subprocess.Popen([sys.executable, "-m", "stack.dashboard"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/") == 200 or process.poll() is not None,
                   timeout=30, what="rq-dashboard")
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
    finally:
        stop_process(process)


@pytest.mark.skipif(shutil.which("haproxy") is None and not os.environ.get("CI_REQUIRE_BROWSER"),
                    reason="haproxy is not installed")
def test_haproxy_accepts_the_shipped_configuration():
    env = {**os.environ, "WEB_1": "127.0.0.1:18881", "WEB_2": "127.0.0.1:18882", "LISTEN": f"127.0.0.1:{free_port()}"}
    done = subprocess.run(["haproxy", "-c", "-f", str(ROOT / "deploy" / "haproxy.cfg")], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Configuration file is valid" in done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("redis-sentinel") is None and not os.environ.get("CI_REQUIRE_BROWSER"),
                    reason="redis-sentinel is not installed")
def test_a_real_sentinel_runs_the_shipped_configuration(tmp_path):
    """deploy/sentinel.conf with its addresses replaced, as it says to do: Sentinel starts and monitors the primary."""
    port = free_port()
    text = (ROOT / "deploy" / "sentinel.conf").read_text()
    assert "bind 198.18.7.11\n" in text and "port 26379\n" in text and "dir /var/lib/redis\n" in text
    config = tmp_path / "sentinel.conf"  # Sentinel rewrites its file
    config.write_text(text.replace("bind 198.18.7.11\n", "bind 127.0.0.1\n").replace("port 26379\n", f"port {port}\n")
                      .replace("dir /var/lib/redis\n", f"dir {tmp_path}\n"))
    process = subprocess.Popen([shutil.which("redis-sentinel"), str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        sentinel = Redis(port=port, password="change-me-sentinel", socket_connect_timeout=0.5, decode_responses=True)
        wait_until(lambda: _sentinel_masters(sentinel) or process.poll() is not None, timeout=15,
                   what="redis-sentinel")
        assert process.poll() is None, "redis-sentinel exited at start"
        master = _sentinel_masters(sentinel)["factorial"]
        assert (master["ip"], int(master["port"]), int(master["quorum"])) == ("198.18.7.11", 6379, 2)
        assert int(master["down-after-milliseconds"]) == 1000
    finally:
        stop_process(process)


def _sentinel_masters(sentinel: Redis) -> dict:
    try:
        return sentinel.sentinel_masters()
    except Exception:
        return {}
