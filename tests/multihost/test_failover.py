"""Several hosts, faults in turn: Redis fails over, a server dies, and nothing acknowledged is lost.

Hosts, each a network namespace on one bridge (tests/multihost/netns.py):
``redis-1`` (the primary), ``redis-2`` and ``redis-3`` (replicas), each with
a Sentinel; ``web-1`` and ``web-2`` (servers, ``REDIS_MIN_REPLICAS=1``);
``worker-1``; HAProxy and the clients on the bridge's own address. Every
Redis and Sentinel needs a password. Clients send hard and soft requests at
a steady pace through HAProxy while, in turn:

1. the primary's redis-server gets SIGKILL (it comes back as a replica after);
2. web-1's server gets SIGKILL (it is started again after);
3. with ``MULTIHOST_PARTITION=1`` only: the host of the new primary loses
   its link (``ip link set eth0 down``).

Asserted for each: the service accepts new requests again, without
restarting servers, workers or rq-dashboard; every acknowledged task (those acknowledged
just before the fault included) gets exactly one final answer, the right one.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

import pytest

from tests.conftest import ROOT
from tests.deploy.haproxy import HAProxy
from tests.deploy.patient_client import PatientClient, send_steadily
from tests.helpers import async_wait_until, free_port, stop_process, wait_until
from tests.multihost.netns import Lab
from tests.multihost.topology import (HARD, MASTER, REDIS_PASSWORD, REDIS_SENTINEL, SENTINEL_PASSWORD, SOFT,
                                      kill_redis, primary_address, redis_command, replicas_linked,
                                      sentinel_config, why_not)

pytestmark = pytest.mark.skipif(bool(why_not), reason=why_not or "runs")


def dashboard_workers(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return len(json.load(response)["workers"])
    except (OSError, ValueError, KeyError):
        return None


@dataclass
class Stack:
    lab: Lab
    redis_hosts: list
    webs: list
    sentinels: list
    env: dict
    tmp_path: object
    clients: list
    balancer: HAProxy


def start_web(stack: Stack, web) -> None:
    web.start([sys.executable, "server.py"], stack.tmp_path / f"{web.name}.log", cwd=ROOT,
              env={**stack.env, "SERVER_HOST": web.address, "SERVER_PORT": "8888"})


async def through(stack: Stack, fault: str, act, recovered) -> str:
    """Steady load; ``act()``; wait for ``recovered()`` and new acknowledgements; every answer in. A line of figures."""
    clients = stack.clients
    stop = asyncio.Event()
    sender = asyncio.ensure_future(send_steadily(clients, stop, HARD, SOFT))
    try:
        # At least one acknowledged job in flight when the fault comes (an idle
        # machine computes these in tens of milliseconds, so rarely more).
        await async_wait_until(lambda: sum(len(c.pending) for c in clients) >= 1, timeout=30,
                               what="jobs acknowledged and waiting")
        acked_before = {t for c in clients for t in c.acked}
        reconnects = sum(c.reconnects for c in clients)
        began = time.monotonic()
        detail = act()
        outcome = await async_wait_until(recovered, timeout=40, interval=0.1, what=f"recovery from: {fault}")
        recovered_s = time.monotonic() - began
        acked = sum(len(c.acked) for c in clients)
        await async_wait_until(lambda: sum(len(c.acked) for c in clients) >= acked + 10, timeout=60,
                               what=f"new requests acknowledged after: {fault}")
        resumed_s = time.monotonic() - began
    finally:
        stop.set()
        await sender
    try:
        await async_wait_until(lambda: all(c.settled for c in clients), timeout=60,
                               what=f"every request to be answered after: {fault}")
    except AssertionError:
        raise AssertionError(f"{fault}: unanswered {[(c.pending, c.unacked) for c in clients]}") from None
    assert acked_before <= {t for c in clients for t in c.finals}
    return (f"| {fault} ({detail}) | {outcome} after {recovered_s:.1f} s | {resumed_s:.1f} s | "
            f"{time.monotonic() - began:.1f} s | {len(acked_before)} | "
            f"{sum(c.reconnects for c in clients) - reconnects} |")


def new_primary_named(stack: Stack, old: str):
    def check():
        address = primary_address(stack.sentinels)
        return f"{address} promoted" if address and address != old else None
    return check


@pytest.mark.slow
@pytest.mark.gen_test(timeout=300)
async def test_faults_in_turn_lose_no_acknowledged_task(tmp_path):
    lab = Lab(f"{os.getpid() % 10000:04d}")
    stack = dashboard = None
    try:
        lab.create()
        redis_hosts = [lab.add_host(f"redis-{i}", 10 + i) for i in (1, 2, 3)]
        webs = [lab.add_host(f"web-{i}", 20 + i) for i in (1, 2)]
        worker_host = lab.add_host("worker-1", 31)
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
        stack = Stack(lab, redis_hosts, webs, sentinels, env, tmp_path, [], None)
        for web in webs:
            start_web(stack, web)
        # Restarted when it exits, as its service manager would (deploy/systemd).
        worker_host.start(["sh", "-c", f"while :; do {sys.executable} -m rq.cli worker soft hard --worker-class "
                           "jobs.worker.LaneWorker --config stack.rq_config; sleep 0.5; done"],
                          tmp_path / "worker-1.log", cwd=ROOT, env=env)

        stack.balancer = HAProxy(tmp_path, f"{lab.client_address}:{free_port()}",
                                 [f"{web.address}:8888" for web in webs]).start()
        loop = asyncio.get_running_loop()
        for name in ("web-1", "web-2"):
            await loop.run_in_executor(None, stack.balancer.wait_state, name, "UP", 40)
        stack.clients = [await PatientClient(f"ws://{stack.balancer.listen}/ws", reconnect_for_s=90).start()
                         for _ in range(3)]
        # rq-dashboard on the client host, through the same Sentinels.
        dashboard_port = free_port()
        dashboard = subprocess.Popen([sys.executable, "-m", "stack.dashboard"], cwd=ROOT,
                                     env={**env, "RQ_DASHBOARD_PORT": str(dashboard_port)},
                                     stdout=open(tmp_path / "dashboard.log", "wb"), stderr=subprocess.STDOUT)
        workers_json = f"http://127.0.0.1:{dashboard_port}/0/data/workers.json"
        await loop.run_in_executor(None, lambda: wait_until(lambda: dashboard_workers(workers_json) == 1, timeout=30,
                                                            what="rq-dashboard to show the worker"))
        rows = []

        # 1. The primary's Redis killed.
        rows.append(await through(stack, "primary redis-server SIGKILL", lambda: kill_redis(primary) or primary.name,
                                  new_primary_named(stack, primary.address)))
        current = primary_address(sentinels)
        primary.start(redis_command(primary, tmp_path, next(h for h in redis_hosts if h.address == current)),
                      tmp_path / f"{primary.name}.log")
        wait_until(lambda: replicas_linked(current) == 2, timeout=30, what="the old primary to rejoin as a replica")

        # The dashboard follows the failover without a restart.
        await loop.run_in_executor(None, lambda: wait_until(lambda: dashboard_workers(workers_json) == 1, timeout=30,
                                                            what="rq-dashboard to show the worker after the failover"))
        assert dashboard.poll() is None
        with urllib.request.urlopen(f"http://127.0.0.1:{dashboard_port}/", timeout=5) as response:
            page = response.read().decode()
        assert MASTER in page and REDIS_PASSWORD not in page and SENTINEL_PASSWORD not in page

        # 2. A web server killed; started again after.
        server = webs[0].processes[0]
        rows.append(await through(stack, "web server SIGKILL", lambda: server.kill() or webs[0].name,
                                  lambda: "answered by web-2" if server.poll() is not None else None))
        start_web(stack, webs[0])
        await loop.run_in_executor(None, stack.balancer.wait_state, "web-1", "UP", 40)

        # 3. The host of the current primary cut off: its Redis and its Sentinel fall silent.
        # Its one explained failure was the test client's: it stopped reading at a
        # rate_limited refusal (tests/deploy/patient_client.py now retries). After
        # that, 26 of 27 runs passed (10 with four CPU-bound processes beside);
        # the failing one's cause was not captured, so CI still leaves it out.
        if os.environ.get("MULTIHOST_PARTITION") == "1":
            current = primary_address(sentinels)
            cut = next(h for h in redis_hosts if h.address == current)
            rows.append(await through(stack, "primary host link down", lambda: cut.cut() or cut.name,
                                      new_primary_named(stack, current)))
        clients = stack.clients
        assert all(process.poll() is None for web in webs for process in web.processes[-1:]), "a server exited"
        lost_with_worker = [t for c in clients for t, finals in c.finals.items()
                            if finals and finals[0].get("code") in ("job_failed", "timeout")]
        acked = sum(len(c.acked) for c in clients)
        slowest = max(t for c in clients for t in c.answered_after_s.values())
        print("\n| fault | recovery | new requests acknowledged again after | every answer in after | "
              "waiting at the fault | client reconnects |\n| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows))
        print(f"{acked} tasks acknowledged in all, each answered once; slowest answer {slowest:.1f} s after "
              f"its acknowledgement; {len(lost_with_worker)} failed with their worker")
        # A run interrupted by a failover is not the job's failure: it runs
        # again (jobs/lifecycle.py), so no client hears job_failed or timeout.
        assert lost_with_worker == []
        assert [problem for c in clients for problem in c.wrong_answers()] == []
    finally:
        if dashboard is not None:
            stop_process(dashboard)
        if stack is not None:
            for client in stack.clients:
                await client.stop()
            if stack.balancer:
                stack.balancer.stop()
        lab.destroy()
