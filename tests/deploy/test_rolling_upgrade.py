"""An upgrade one server at a time, through deploy/haproxy.cfg, loses nothing.

Two servers (two processes each) behind HAProxy, one worker, three clients
sending hard and soft requests at a steady pace, and ``python -m client``
waiting for 40 hard results. Each server in turn gets
SIGTERM, drains (1012), exits, and starts again; the clients reconnect
through HAProxy and ask again for what they wait for. Every acknowledged
task gets exactly one final answer, and it is right.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time

import gmpy2

import pytest

from tests.conftest import ROOT
from tests.deploy.haproxy import HAProxy, haproxy_binary
from tests.deploy.patient_client import PatientClient, send_steadily
from tests.helpers import async_wait_until, free_port

pytestmark = pytest.mark.skipif(haproxy_binary() is None, reason="needs haproxy (apt-get install haproxy)")

# Hard numbers take 20-150 ms each on one worker, so some are always queued.
# Bounded, so a long run never asks for more than MAX_NUMBER (the client would
# be refused, and stop): 60,000 to 160,000, each once per 100,000 asks.
HARD = (60_000 + (k * 7_919) % 100_000 for k in itertools.count())
SOFT = itertools.count(2, 1)
PACE_S = 0.05


@pytest.mark.slow
@pytest.mark.gen_test(timeout=180)
async def test_restarting_servers_one_by_one_behind_haproxy_answers_every_acknowledged_task_once(
        make_server, worker, tmp_path):
    ports = [free_port(), free_port()]
    servers = [make_server(port=port, web_processes=2, server_host="127.0.0.1") for port in ports]
    balancer = HAProxy(tmp_path, f"127.0.0.1:{free_port()}", [f"127.0.0.1:{port}" for port in ports]).start()
    clients: list[PatientClient] = []
    cli = None
    try:
        for name in ("web-1", "web-2"):
            balancer.wait_state(name, "UP")
        url = f"ws://{balancer.listen}/ws"
        clients = [await PatientClient(url).start() for _ in range(3)]
        # The project's own CLI waits for its numbers across both restarts too.
        cli_numbers = list(range(150_001, 150_001 + 40 * 997, 997))
        cli = subprocess.Popen([sys.executable, "-m", "client", *map(str, cli_numbers), "--json", "-q",
                                "--url", url, "--timeout", "120"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        stop = asyncio.Event()
        sender = asyncio.ensure_future(send_steadily(clients, stop, HARD, SOFT, PACE_S))

        restarts = []
        for index, name in enumerate(("web-1", "web-2")):
            await async_wait_until(lambda: sum(len(c.pending) for c in clients) >= 5, timeout=20,
                                   what="jobs waiting on the servers")
            began = time.monotonic()
            old = servers[index]
            old.process.terminate()
            code = await asyncio.get_running_loop().run_in_executor(None, old.process.wait, 15)
            assert code == 0
            drained = time.monotonic() - began
            servers[index] = await asyncio.get_running_loop().run_in_executor(
                None, lambda: make_server(port=ports[index], web_processes=2, server_host="127.0.0.1"))
            await asyncio.get_running_loop().run_in_executor(None, balancer.wait_state, name, "UP")
            restarts.append((name, drained, time.monotonic() - began))

        await asyncio.sleep(1)  # a duration: the load goes on through the second new server a moment
        stop.set()
        await sender
        await async_wait_until(lambda: all(c.settled for c in clients), timeout=90,
                               what="every request to be answered")
        out, err = await asyncio.get_running_loop().run_in_executor(None, cli.communicate, None, 120)
        assert cli.returncode == 0, err.decode()[-2000:]
        lines = [json.loads(line) for line in out.decode().splitlines()]
        assert {line["number"]: line["digits"] for line in lines} == {
            n: len(str(gmpy2.fac(n))) for n in cli_numbers}
        acked = sum(len(c.acked) for c in clients)
        drops = sum(c.reconnects for c in clients)
        codes = sorted({code for c in clients for code in c.close_codes})
        slowest = max(t for c in clients for t in c.answered_after_s.values())
        print(f"\nrolling upgrade: {acked} acknowledged, {drops} reconnects (close codes {codes}), "
              f"slowest answer {slowest:.2f} s; " + ", ".join(f"{n} drained in {d:.2f} s, back UP after {u:.1f} s"
                                                               for n, d, u in restarts))
        assert [problem for c in clients for problem in c.wrong_answers()] == []
        assert drops >= 2 and 1012 in codes  # the restarts did cut the clients' connections
        assert acked >= 30
    finally:
        if cli is not None and cli.poll() is None:
            cli.kill()
            cli.wait()
        for client in clients:
            await client.stop()
        balancer.stop()
