"""The multi-host stack of docs/deployment.md, in network namespaces (tests/multihost/netns.py).

``redis-1`` (the primary), ``redis-2`` and ``redis-3`` (replicas), each with
a Sentinel; ``web-1`` and ``web-2`` (one server process each,
``REDIS_MIN_REPLICAS=1``); ``worker-1``; HAProxy with the shipped
deploy/haproxy.cfg and the test's clients on the bridge's own address.
Every Redis and Sentinel needs a password. ``build()`` makes it all,
``tear_down()`` removes it all.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis
from redis.sentinel import Sentinel

from tests.conftest import ROOT
from tests.deploy.haproxy import HAProxy, haproxy_binary
from tests.deploy.patient_client import PatientClient
from tests.helpers import wait_until
from tests.multihost.netns import Host, Lab, can_run

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_SENTINEL = "/usr/bin/redis-sentinel"
MASTER = "factorial"
REDIS_PASSWORD = "redis-pw-41d2"
SENTINEL_PASSWORD = "sentinel-pw-77a0"
# Sentinel: a primary is down after 1 s without an answer; quorum 2 of 3.
DOWN_AFTER_MS = 1000

why_not = can_run() or ("" if os.path.exists(REDIS_SENTINEL) and haproxy_binary() else
                        "needs Debian's redis-server, redis-sentinel and haproxy")

# Hard numbers between 20000 and 120000 (20-150 ms each), every one new for a
# long while (6173 is prime to 100000).
HARD = (20_000 + (k * 6_173) % 100_000 for k in itertools.count())
SOFT = itertools.count(1)


def redis_command(host: Host, folder: Path, replica_of: Host | None = None) -> list[str]:
    command = [REDIS_SERVER, "--bind", host.address, "--port", "6379", "--protected-mode", "no",
               "--save", "", "--appendonly", "no", "--dir", str(folder),
               "--requirepass", REDIS_PASSWORD, "--masterauth", REDIS_PASSWORD]
    if replica_of:
        command += ["--replicaof", replica_of.address, "6379"]
    return command


def sentinel_config(host: Host, primary: Host, folder: Path) -> str:
    path = folder / f"sentinel-{host.name}.conf"
    path.write_text(f"""port 26379
bind {host.address}
dir {folder}
requirepass {SENTINEL_PASSWORD}
sentinel sentinel-pass {SENTINEL_PASSWORD}
sentinel monitor {MASTER} {primary.address} 6379 2
sentinel auth-pass {MASTER} {REDIS_PASSWORD}
sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}
sentinel failover-timeout {MASTER} 5000
sentinel parallel-syncs {MASTER} 2
""")
    return str(path)


def primary_address(sentinels: list[tuple[str, int]]) -> str | None:
    try:
        sentinel = Sentinel(sentinels, sentinel_kwargs={"password": SENTINEL_PASSWORD, "socket_timeout": 0.5,
                                                        "socket_connect_timeout": 0.5})
        return sentinel.discover_master(MASTER)[0]
    except Exception:
        return None


def replicas_linked(address: str) -> int:
    try:
        info = Redis(address, 6379, password=REDIS_PASSWORD, socket_timeout=0.5).info("replication")
        return sum(1 for key, value in info.items() if key.startswith("slave") and value.get("state") == "online")
    except Exception:
        return 0


def pids_running(host: Host, program: str) -> list[int]:
    """The host's processes whose command line names ``program``."""
    found = []
    for pid in host.pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if program.encode() in cmdline.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def kill_redis(host: Host) -> None:
    """SIGKILL the host's redis-server (Debian's redis-sentinel is the same binary: matched by its config)."""
    for pid in pids_running(host, "redis-server"):
        os.kill(pid, signal.SIGKILL)


def sentinel_process(host: Host) -> subprocess.Popen:
    """The host's Sentinel, as build_hosts() started it (Redis rewrites its command line, so no name finds it)."""
    return next(p for p in host.processes if p.args[4:5] == [REDIS_SENTINEL])


def open_websockets(web: Host) -> int:
    """What the server's /metrics says about its open WebSockets; -1 if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{web.address}:8888/metrics", timeout=2) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("factorial_open_connections "):
                    return int(float(line.split()[1]))
    except OSError:
        pass
    return -1


@dataclass
class Stack:
    lab: Lab
    redis_hosts: list[Host]
    webs: list[Host]
    worker_hosts: list[Host]
    sentinels: list[tuple[str, int]]
    env: dict
    folder: Path
    clients: list[PatientClient] = field(default_factory=list)
    balancer: HAProxy | None = None

    def start_web(self, web: Host) -> subprocess.Popen:
        return web.start([sys.executable, "server.py"], self.folder / f"{web.name}.log", cwd=ROOT,
                         env={**self.env, "SERVER_HOST": web.address, "SERVER_PORT": "8888"})


def build_hosts(folder: Path, env: dict | None = None, workers: int = 1) -> Stack:
    """Redis, Sentinels, both servers and the workers, running; HAProxy and clients not yet."""
    lab = Lab(f"{os.getpid() % 10000:04d}")
    stack = Stack(lab, [], [], [], [], {}, folder)
    try:
        lab.create()
        stack.redis_hosts = [lab.add_host(f"redis-{i}", 10 + i) for i in (1, 2, 3)]
        stack.webs = [lab.add_host(f"web-{i}", 20 + i) for i in (1, 2)]
        stack.worker_hosts = [lab.add_host(f"worker-{i}", 30 + i) for i in range(1, workers + 1)]
        primary = stack.redis_hosts[0]
        for host in stack.redis_hosts:
            host.start(redis_command(host, folder, None if host is primary else primary), folder / f"{host.name}.log")
        wait_until(lambda: replicas_linked(primary.address) == 2, timeout=20, what="both replicas to sync")
        for host in stack.redis_hosts:
            host.start([REDIS_SENTINEL, sentinel_config(host, primary, folder)], folder / f"sentinel-{host.name}.log")
        stack.sentinels = [(host.address, 26379) for host in stack.redis_hosts]
        wait_until(lambda: primary_address(stack.sentinels) == primary.address, timeout=20, what="the Sentinels")

        stack.env = {**os.environ, "PYTHONPATH": str(ROOT),
                     "REDIS_URL": f"redis://:{REDIS_PASSWORD}@sentinel-named-primary/0",
                     "REDIS_SENTINELS": ",".join(f"{a}:{p}" for a, p in stack.sentinels),
                     "REDIS_SENTINEL_MASTER": MASTER, "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
                     "REDIS_MIN_REPLICAS": "1", "WEB_PROCESSES": "1", "LOG_LEVEL": "INFO",
                     "DELIVERY_WAIT_MS": "50", "SWEEP_INTERVAL_S": "0.5",
                     # A job whose worker died with it is reported failed this long after it started.
                     "HARD_TIMEOUT_S": "10", **(env or {})}
        for web in stack.webs:
            stack.start_web(web)
        for host in stack.worker_hosts:
            # Restarted when it exits, as its service manager would (deploy/systemd).
            host.start(["sh", "-c", f"while :; do {sys.executable} -m rq.cli worker soft hard --worker-class "
                        "jobs.worker.LaneWorker --config stack.rq_config; sleep 0.5; done"],
                       # Unbuffered: a test reads from the log which job a worker has started.
                       folder / f"{host.name}.log", cwd=ROOT, env={**stack.env, "PYTHONUNBUFFERED": "1"})
    except BaseException:
        lab.destroy()
        raise
    return stack


async def front(stack: Stack, clients: int) -> None:
    """HAProxy (the shipped config) in front of both servers once both are UP, and ``clients`` patient clients."""
    from tests.helpers import free_port

    stack.balancer = HAProxy(stack.folder, f"{stack.lab.client_address}:{free_port()}",
                             [f"{web.address}:8888" for web in stack.webs]).start()
    loop = asyncio.get_running_loop()
    for name in ("web-1", "web-2"):
        await loop.run_in_executor(None, stack.balancer.wait_state, name, "UP", 40)
    for _ in range(clients):
        stack.clients.append(await PatientClient(f"ws://{stack.balancer.listen}/ws", reconnect_for_s=90).start())


async def tear_down(stack: Stack | None) -> None:
    if stack is None:
        return
    for client in stack.clients:
        await client.stop()
    if stack.balancer:
        stack.balancer.stop()
    stack.lab.destroy()
