"""A server that cannot serve hands its clients to one that can, through the shipped HAProxy config.

The stack of tests/multihost/topology.py, four clients through HAProxy
sending soft and hard requests at a steady pace (some on each server), and
one fault per test:

- web-1 cut off from every Redis and Sentinel host (iptables DROP both ways;
  HAProxy and the clients still reach it): it answers ``unavailable`` within
  REDIS_UNAVAILABLE_S, /healthz says so within 1 s, HAProxy takes it out and
  it closes its WebSockets with 1013, so its clients reconnect to web-2 and
  ask for their jobs by task_id: every request waits at most 6 s for its
  acknowledgement;
- web-1 frozen (SIGSTOP): HAProxy's checks time out, it marks web-1 down and
  closes its sessions (``on-marked-down shutdown-sessions``): at most 8 s;
- the first Sentinel of the list dead or silent, then the primary killed: the two
  Sentinels left fail over, and new requests are acknowledged within 3.5 s
  of the kill (the service asks the Sentinels at once, with no retries).

Each ends with every acknowledged task answered exactly once, correctly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.helpers import async_wait_until
from tests.multihost import topology
from tests.deploy.patient_client import send_steadily
from tests.multihost.topology import HARD, SOFT, kill_redis, open_websockets, sentinel_process

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(topology.why_not), reason=topology.why_not or "runs")]

CLIENTS = 4
CUT_OFF_BOUND_S = 6.0
FROZEN_BOUND_S = 8.0
FAILOVER_BOUND_S = 3.5
FAULT_S = 10.0  # how long the cut or the freeze lasts


def iptables(host, action: str, redis_hosts) -> None:
    """Drop every packet between ``host`` and the Redis hosts (their Sentinels included), as a partition does."""
    for other in redis_hosts:
        for rule in (["OUTPUT", "-d", other.address], ["INPUT", "-s", other.address]):
            subprocess.run(["ip", "netns", "exec", host.netns, "iptables", action, *rule, "-j", "DROP"],
                           check=True, capture_output=True)


def healthz_seconds(web) -> tuple[int, float]:
    """/healthz of one server, directly: (status, seconds it took); status 0 if it did not answer in 5 s."""
    began = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://{web.address}:8888/healthz", timeout=5) as response:
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
    except OSError:
        status = 0
    return status, time.monotonic() - began


async def stack_with_clients(tmp_path):
    loop = asyncio.get_running_loop()
    stack = await loop.run_in_executor(None, topology.build_hosts, tmp_path)
    try:
        await topology.front(stack, CLIENTS)
        # leastconn spreads the clients: some are on web-1, the server the faults hit.
        await async_wait_until(lambda: open_websockets(stack.webs[0]) >= 1, timeout=10, what="a client on web-1")
    except BaseException:
        await topology.tear_down(stack)
        raise
    return stack


async def under_load(stack, fault: str, act, watch_s: float, heal=None) -> dict:
    """Steady load; ``act()`` at t0; requests keep coming ``watch_s``; ``heal()``; every answer in.

    Returns figures: the longest wait for an acknowledgement of a request first
    asked in [t0, t0 + watch_s], each client's next acknowledgement after t0,
    the first acknowledgement of a request asked after t0, and reconnects.
    """
    clients = stack.clients
    stop = asyncio.Event()
    sender = asyncio.ensure_future(send_steadily(clients, stop, HARD, SOFT))
    figures = {}
    try:
        await async_wait_until(lambda: sum(len(c.pending) for c in clients) >= 1, timeout=20,
                               what="jobs acknowledged and waiting")
        reconnects = sum(c.reconnects for c in clients)
        t0 = time.monotonic()
        figures.update(act() or {})
        await asyncio.sleep(watch_s)  # the load goes on meanwhile: the requests under test
        # Every request asked in the window acknowledged (or the assertion below names the wait).
        window_end = t0 + watch_s
        await async_wait_until(
            lambda: all(ref in c.ack_wait_s for c in clients for ref, asked in c.first_asked_at.items()
                        if t0 <= asked <= window_end), timeout=20, what=f"acknowledgements after: {fault}")
    finally:
        stop.set()
        await sender
        if heal is not None:
            heal()
    waits = [w for c in clients for w in c.waits_for_acknowledgement(t0, t0 + watch_s)]
    figures["longest_wait_s"] = max(waits)
    figures["next_ack_s"] = [min((c.first_asked_at[r] + w for r, w in c.ack_wait_s.items()
                                  if c.first_asked_at[r] >= t0), default=float("inf")) - t0 for c in clients]
    figures["first_ack_after_s"] = min(figures["next_ack_s"])
    figures["reconnects"] = sum(c.reconnects for c in clients) - reconnects
    figures["close_codes"] = sorted({code for c in clients for code in c.close_codes if code is not None})
    try:
        await async_wait_until(lambda: all(c.settled for c in clients), timeout=40,
                               what=f"every request answered after: {fault}")
    except AssertionError:
        raise AssertionError(f"{fault}: unanswered {[(c.pending, c.unacked) for c in clients]}; "
                             f"{[p for c in clients for p in c.wrong_answers()]}; {figures}") from None
    figures["acknowledged"] = sum(len(c.acked) for c in clients)
    print(f"\n{fault}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in figures.items()))
    return figures


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, list) and value and isinstance(value[0], float):
        return "[" + ", ".join(f"{v:.2f}" for v in value) + "]"
    return value


def failed_with_worker(clients) -> list[str]:
    return [t for c in clients for t, finals in c.finals.items() if finals and finals[0].get("code") in
            ("job_failed", "timeout")]


@pytest.mark.gen_test(timeout=120)
async def test_a_server_cut_off_from_redis_hands_its_clients_over_within_6_s(tmp_path):
    stack = await stack_with_clients(tmp_path)
    try:
        web1 = stack.webs[0]
        loop = asyncio.get_running_loop()

        def cut():
            iptables(web1, "-A", stack.redis_hosts)
            return {}

        async def health_during_cut():
            await asyncio.sleep(2.0)  # a duration: /healthz is asked 2 s into the cut, not when something happens
            return await loop.run_in_executor(None, healthz_seconds, web1)

        health = asyncio.ensure_future(health_during_cut())
        figures = await under_load(stack, "web-1 cut off from Redis", cut, watch_s=FAULT_S,
                                   heal=lambda: iptables(web1, "-D", stack.redis_hosts))
        status, took = await health
        print(f"web-1 /healthz during the cut: {status} in {took:.3f} s")
        assert status == 503 and took < 1.0  # the contract is 0.8 s whatever Redis does; 0.2 s of slack
        assert figures["reconnects"] >= 1, "no client was handed over"
        assert figures["longest_wait_s"] <= CUT_OFF_BOUND_S, figures
        assert [p for c in stack.clients for p in c.wrong_answers()] == []
    finally:
        await topology.tear_down(stack)


@pytest.mark.gen_test(timeout=120)
async def test_a_frozen_server_loses_its_clients_to_the_other_within_8_s(tmp_path):
    stack = await stack_with_clients(tmp_path)
    try:
        server = stack.webs[0].processes[0]  # `ip netns exec` execs python server.py: the same pid

        def freeze():
            os.kill(server.pid, signal.SIGSTOP)
            return {}

        figures = await under_load(stack, "web-1 frozen", freeze, watch_s=FAULT_S,
                                   heal=lambda: os.kill(server.pid, signal.SIGCONT))
        assert figures["reconnects"] >= 1, "no client was handed over"
        assert figures["longest_wait_s"] <= FROZEN_BOUND_S, figures
        assert [p for c in stack.clients for p in c.wrong_answers()] == []
        # Thawed, it serves again.
        await asyncio.get_running_loop().run_in_executor(None, stack.balancer.wait_state, "web-1", "UP", 30)
    finally:
        await topology.tear_down(stack)


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("sentinel_fault", ["dead", "silent"])
async def test_with_a_dead_or_silent_sentinel_a_killed_primary_is_replaced_within_3_5_s(tmp_path, sentinel_fault):
    stack = await stack_with_clients(tmp_path)
    try:
        primary = stack.redis_hosts[0]
        # The first Sentinel every process asks: killed (its port refuses), or
        # paused (it accepts connections and answers nothing, as a cut-off host).
        sentinel = sentinel_process(primary)
        if sentinel_fault == "dead":
            sentinel.kill()
            sentinel.wait(5)
        else:
            sentinel.send_signal(signal.SIGSTOP)

        def kill():
            kill_redis(primary)
            return {}

        figures = await under_load(stack, f"{sentinel_fault} Sentinel, primary killed", kill, watch_s=6.0)
        # Every client's next acknowledgement, not only the first one's.
        assert max(figures["next_ack_s"]) <= FAILOVER_BOUND_S, figures
        assert topology.primary_address(stack.sentinels[1:]) != primary.address
        # A job the worker was running when Redis died may end with it (its
        # worker could not store its end): job_failed or timeout, at most one.
        # Its running again elsewhere is the job lifecycle's part, not this one's.
        lost = failed_with_worker(stack.clients)
        assert len(lost) <= 1, lost
        assert [p for c in stack.clients for p in c.wrong_answers() if not any(t in p for t in lost)] == []
    finally:
        await topology.tear_down(stack)


# Busy for a few seconds on one worker (GMP, then its digits): still running when its host is cut off.
LONG_JOB = 3_000_000


@pytest.mark.gen_test(timeout=120)
async def test_a_job_whose_worker_host_is_cut_off_runs_again_on_the_other_worker(tmp_path):
    """Depends on the job lifecycle (jobs/lifecycle.py): a worker lost to a fault outside the job
    is not the job's failure, the job runs again (protocol: One answer per task)."""
    loop = asyncio.get_running_loop()
    stack = await loop.run_in_executor(None, lambda: topology.build_hosts(
        tmp_path, {"MAX_NUMBER": str(LONG_JOB), "HARD_TIMEOUT_S": "30"}, workers=2))
    try:
        await topology.front(stack, 1)
        client = stack.clients[0]
        await client.ask(LONG_JOB)
        await async_wait_until(lambda: client.acked, timeout=10, what="the acknowledgement")
        task_id = next(iter(client.acked))

        def running_on():
            return next((h for h in stack.worker_hosts
                         if f"factorial({LONG_JOB})" in (tmp_path / f"{h.name}.log").read_text(errors="replace")), None)

        host = await async_wait_until(running_on, timeout=20, what="a worker to start the job")
        iptables(host, "-A", stack.redis_hosts)
        cut = time.monotonic()
        await async_wait_until(lambda: client.finals.get(task_id), timeout=60, what="the job's final answer")
        answered_after = time.monotonic() - cut
        print(f"\n{LONG_JOB}! on {host.name}, its host cut off: {client.finals[task_id][0].get('type')} "
              f"{client.finals[task_id][0].get('code', '')} {answered_after:.1f} s after the cut")
        assert client.wrong_answers() == []
        other = next(h for h in stack.worker_hosts if h is not host)
        assert f"factorial({LONG_JOB})" in (tmp_path / f"{other.name}.log").read_text(errors="replace"), \
            "the job did not run again on the other worker"
    finally:
        await topology.tear_down(stack)
