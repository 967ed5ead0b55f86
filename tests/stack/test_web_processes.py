"""``python server.py`` with WEB_PROCESSES: children share the port, a dead one is replaced, SIGTERM stops all."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest

from tests.helpers import Client, wait_until


def children(pid: int) -> set[int]:
    found = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as listing:
            found |= {int(child) for child in listing.read().split()}
    return found


def socket_owners(port: int, state: str) -> set[int]:
    """Pids holding TCP sockets of the local port in that state (``ss`` state filter)."""
    out = subprocess.run(["ss", "-Htnp", "state", state, f"sport = :{port}"],
                         capture_output=True, text=True, check=True).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def listeners(port: int) -> set[int]:
    return socket_owners(port, "listening")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[1].split()[0] != "Z"


@pytest.mark.slow
@pytest.mark.gen_test(timeout=90)
async def test_three_processes_share_the_port_a_killed_one_is_replaced_and_sigterm_stops_them_all(make_server, worker):
    served = make_server(web_processes=3)
    parent = served.process.pid
    first = wait_until(lambda: (lambda c: c if len(c) == 3 and listeners(served.port) >= c else None)(children(parent)),
                       timeout=20, what="three children listening on the port")

    clients = [await Client.connect(served.ws_url) for _ in range(12)]
    for number, client in enumerate(clients, start=1):
        _, done = await client.factorial(number)
        assert done["type"] == "success"
    # The kernel spread the connections over the children.
    assert len(socket_owners(served.port, "established") & first) >= 2

    victim = sorted(first)[0]
    os.kill(victim, signal.SIGKILL)
    replaced = wait_until(lambda: (lambda c: c if len(c) == 3 and victim not in c and listeners(served.port) >= c
                                   else None)(children(parent)), timeout=20, what="a new third child")
    assert first - {victim} < replaced

    client = await Client.connect(served.ws_url)
    _, done = await client.factorial(10)
    assert done["result"] == 3628800

    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(15) == 0
    assert not any(alive(pid) for pid in replaced)


@pytest.mark.slow
def test_children_do_not_outlive_a_killed_supervisor(make_server):
    served = make_server(web_processes=2)
    kids = wait_until(lambda: (lambda c: c if len(c) == 2 else None)(children(served.process.pid)),
                      timeout=20, what="two children")
    served.process.kill()
    served.process.wait()
    wait_until(lambda: not any(alive(pid) for pid in kids), timeout=15,
               what="the children to exit after their supervisor's death")
