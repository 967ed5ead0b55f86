"""Several hosts, one Redis primary lost: Sentinel fails over, and nothing acknowledged is lost.

Hosts, each a network namespace on one bridge (tests/multihost/netns.py):
``redis-1`` (the primary), ``redis-2`` and ``redis-3`` (replicas), each with
a Sentinel; ``web-1`` and ``web-2`` (servers, ``REDIS_MIN_REPLICAS=1``);
``worker-1``; HAProxy and the clients on the bridge's own address. Every
Redis and Sentinel needs a password. Clients send hard and soft requests at
a steady pace through HAProxy; then the primary's redis-server gets SIGKILL.

Asserted: the Sentinels promote a replica; the servers, the worker and the
clients go on without a restart; every acknowledged task (those acknowledged
just before the kill included) gets exactly one final answer, the right one.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import time

import pytest
from redis import Redis
from redis.sentinel import Sentinel

from tests.conftest import ROOT
from tests.deploy.haproxy import HAProxy, haproxy_binary
from tests.deploy.patient_client import PatientClient
from tests.helpers import async_wait_until, free_port, wait_until
from tests.multihost.netns import Lab, can_run

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_SENTINEL = "/usr/bin/redis-sentinel"
MASTER = "factorial"
REDIS_PASSWORD = "redis-pw-41d2"
SENTINEL_PASSWORD = "sentinel-pw-77a0"
# Sentinel: a primary is down after 1 s without an answer; quorum 2 of 3.
DOWN_AFTER_MS = 1000

why_not = can_run() or ("" if os.path.exists(REDIS_SENTINEL) and haproxy_binary() else
                        "needs Debian's redis-server, redis-sentinel and haproxy")
pytestmark = pytest.mark.skipif(bool(why_not), reason=why_not or "runs")

HARD = itertools.count(50_000, 6_173)
SOFT = itertools.count(1)


def redis_command(host, folder, replica_of=None) -> list[str]:
    command = [REDIS_SERVER, "--bind", host.address, "--port", "6379", "--protected-mode", "no",
               "--save", "", "--appendonly", "no", "--dir", str(folder),
               "--requirepass", REDIS_PASSWORD, "--masterauth", REDIS_PASSWORD]
    if replica_of:
        command += ["--replicaof", replica_of.address, "6379"]
    return command


def sentinel_config(host, primary, folder) -> str:
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
        sentinel = Sentinel(sentinels, sentinel_kwargs={"password": SENTINEL_PASSWORD, "socket_timeout": 0.5})
        return sentinel.discover_master(MASTER)[0]
    except Exception:
        return None


def replicas_linked(address: str) -> int:
    try:
        info = Redis(address, 6379, password=REDIS_PASSWORD, socket_timeout=0.5).info("replication")
        return sum(1 for key, value in info.items() if key.startswith("slave") and value.get("state") == "online")
    except Exception:
        return 0


async def send_steadily(clients: list[PatientClient], stop: asyncio.Event) -> None:
    for turn in itertools.count():
        if stop.is_set():
            return
        await clients[turn % len(clients)].ask(next(HARD) if turn % 3 else next(SOFT) % 1000 + 1)
        await asyncio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.gen_test(timeout=240)
async def test_the_primary_redis_killed_sentinel_fails_over_and_no_acknowledged_task_is_lost(tmp_path):
    bed = Lab(f"{os.getpid() % 10000:04d}")
    clients: list[PatientClient] = []
    balancer = None
    try:
        bed.create()
        redis_hosts = [bed.add_host(f"redis-{i}", 10 + i) for i in (1, 2, 3)]
        webs = [bed.add_host(f"web-{i}", 20 + i) for i in (1, 2)]
        worker_host = bed.add_host("worker-1", 31)
        primary = redis_hosts[0]
        for host in redis_hosts:
            host.start(redis_command(host, tmp_path, None if host is primary else primary), tmp_path / f"{host.name}.log")
        wait_until(lambda: replicas_linked(primary.address) == 2, timeout=20, what="both replicas to sync")
        for host in redis_hosts:
            host.start([REDIS_SENTINEL, sentinel_config(host, primary, tmp_path)], tmp_path / f"sentinel-{host.name}.log")
        sentinels = [(host.address, 26379) for host in redis_hosts]
        wait_until(lambda: primary_address(sentinels) == primary.address, timeout=20, what="the Sentinels")

        env = {**os.environ, "PYTHONPATH": str(ROOT),
               "REDIS_URL": f"redis://:{REDIS_PASSWORD}@sentinel-named-primary/0",
               "REDIS_SENTINELS": ",".join(f"{a}:{p}" for a, p in sentinels),
               "REDIS_SENTINEL_MASTER": MASTER, "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
               "REDIS_MIN_REPLICAS": "1", "WEB_PROCESSES": "1", "LOG_LEVEL": "INFO",
               "DELIVERY_WAIT_MS": "50", "SWEEP_INTERVAL_S": "0.5",
               # A job whose worker died with it is reported failed this long after it started.
               "HARD_TIMEOUT_S": "10"}
        for web in webs:
            web.start([sys.executable, "server.py"], tmp_path / f"{web.name}.log", cwd=ROOT,
                      env={**env, "SERVER_HOST": web.address, "SERVER_PORT": "8888"})
        # Restarted when it exits, as its service manager would (deploy/systemd).
        worker_host.start(["sh", "-c", f"while :; do {sys.executable} -m rq.cli worker soft hard --worker-class "
                           "jobs.worker.LaneWorker --config stack.rq_config; sleep 0.5; done"],
                          tmp_path / "worker-1.log", cwd=ROOT, env=env)

        balancer = HAProxy(tmp_path, f"{bed.client_address}:{free_port()}",
                           [f"{web.address}:8888" for web in webs]).start()
        for name in ("web-1", "web-2"):
            await asyncio.get_running_loop().run_in_executor(None, balancer.wait_state, name, "UP", 40)

        clients = [await PatientClient(f"ws://{balancer.listen}/ws", reconnect_for_s=90).start() for _ in range(3)]
        stop = asyncio.Event()
        sender = asyncio.ensure_future(send_steadily(clients, stop))
        await async_wait_until(lambda: sum(len(c.acked) for c in clients) >= 20
                               and sum(len(c.pending) for c in clients) >= 3, timeout=30,
                               what="jobs acknowledged and waiting")

        acked_before = {t for c in clients for t in c.acked}
        killed_at = time.monotonic()
        for pid in primary.pids():
            if "redis-server" in open(f"/proc/{pid}/cmdline").read():
                os.kill(pid, signal.SIGKILL)
        new_primary = await async_wait_until(
            lambda: (lambda a: a if a and a != primary.address else None)(primary_address(sentinels)),
            timeout=30, interval=0.1, what="a Sentinel failover")
        failover_s = time.monotonic() - killed_at
        acked_count = sum(len(c.acked) for c in clients)
        await async_wait_until(lambda: sum(len(c.acked) for c in clients) >= acked_count + 10, timeout=60,
                               what="new requests acknowledged after the failover")
        stop.set()
        await sender
        try:
            await async_wait_until(lambda: all(c.settled for c in clients), timeout=60,
                                   what="every request to be answered")
        except AssertionError:
            raise AssertionError(f"unanswered: {[(c.pending, c.unacked) for c in clients]}") from None
        settled_s = time.monotonic() - killed_at

        assert all(process.poll() is None for web in webs for process in web.processes), "a server restarted"
        acked = sum(len(c.acked) for c in clients)
        slowest = max(t for c in clients for t in c.answered_after_s.values())
        print(f"\nfailover: primary {primary.address} killed, {new_primary} promoted after {failover_s:.1f} s; "
              f"{acked} acknowledged ({len(acked_before)} before the kill), all answered "
              f"{settled_s:.1f} s after it; slowest answer {slowest:.1f} s; "
              f"{sum(c.reconnects for c in clients)} client reconnects")
        # A job running when the worker lost Redis dies with the worker: its
        # client hears job_failed (at most one per worker: the one it ran).
        lost_with_worker = [t for c in clients for t, finals in c.finals.items()
                            if finals and finals[0].get("code") == "job_failed"]
        print(f"failed with their worker: {len(lost_with_worker)}")
        assert len(lost_with_worker) <= 1
        assert [problem for c in clients for problem in c.wrong_answers() if not any(
            t in problem for t in lost_with_worker)] == []
        assert acked_before <= {t for c in clients for t in c.finals}
    finally:
        for client in clients:
            await client.stop()
        if balancer:
            balancer.stop()
        bed.destroy()
