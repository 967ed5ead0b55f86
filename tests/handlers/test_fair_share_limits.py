"""One heavy host against a light client, with and without the per-client limits.

The heavy host (127.0.0.1) opens many connections and sends hard requests back
to back on each; meanwhile a light client bound to 127.0.0.2 asks for 5! every
0.2 s, a distinct n near 100000 every 5 s and a small distinct n every second.
The heavy host runs in a process of its own, so the light client's timings
are not its own client's CPU.

The test runs it small and checks the limits hold the heavy host back. The
figures in docs/performance.md ("Fair share: limits") come from

    python -m tests.handlers.test_fair_share_limits [connections] [requests_each] [seconds]

which runs it at that size, once with the limits at their defaults and once
with them off, and prints both.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from redis import Redis
from tornado.httpclient import HTTPClientError, HTTPRequest

from settings import Settings
from tests.conftest import RedisServer, ServedApp, WorkerProcess
from tests.helpers import Client, async_wait_until, free_port, jobs_waiting

HEAVY_FIRST_N = 50_000
LIGHT_BIG_FIRST_N = 100_000
# After its last request, the light client waits this long for answers still on their way.
GRACE_S = 10.0
SLOW_S = 0.5
NO_LIMITS = {"client_max_connections": 0, "client_max_in_flight": 0, "client_max_requests_per_s": 0}


async def heavy_host(url: str, connections: int, requests_each: int, seconds: float) -> dict:
    """Open ``connections``, send ``requests_each`` hard requests on each at once, read answers for ``seconds``."""
    outcome = {"connected": 0, "refused_429": 0, "acks": 0, "rate_limited": 0, "other_errors": 0, "results": 0}

    async def one(index: int):
        try:
            client = await Client.connect(url)
        except HTTPClientError as err:
            outcome["refused_429" if err.code == 429 else "other_errors"] += 1
            return
        outcome["connected"] += 1
        first = HEAVY_FIRST_N + index * requests_each
        for n in range(first, first + requests_each):
            await client.send({"type": "factorial", "number": n})
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                try:
                    message = await client.receive(timeout=deadline - time.monotonic())
                except (asyncio.TimeoutError, ConnectionError):
                    break
                kind = message["type"]
                if kind == "result":
                    outcome["acks"] += 1
                elif kind == "success":
                    outcome["results"] += 1
                elif kind == "error":
                    outcome["rate_limited" if message["code"] == "rate_limited" else "other_errors"] += 1
        finally:
            client.close()

    await asyncio.gather(*(one(i) for i in range(connections)))
    return outcome


def _heavy_process(url, connections, requests_each, seconds, results):
    results.put(asyncio.run(heavy_host(url, connections, requests_each, seconds)))


async def light_client(url: str, seconds: float) -> dict:
    """The light client's timings, in seconds from each request to its success."""
    client = await Client.connect(HTTPRequest(url, network_interface="127.0.0.2"))
    sent: dict[str, tuple[str, float]] = {}
    times: dict[str, list[float]] = {"5!": [], "~100000!": [], "small": []}
    asked = {"5!": 0, "~100000!": 0, "small": 0}
    refused = 0
    slow: list[float] = []  # when (s after the start) the 5! that took over SLOW_S were sent
    began = time.monotonic()

    async def read():
        nonlocal refused
        while True:
            message = await client.receive(timeout=3600)
            kind, at = sent.get(message.get("ref"), (None, 0.0))
            if message["type"] == "success" and kind:
                times[kind].append(time.monotonic() - at)
                if kind == "5!" and time.monotonic() - at > SLOW_S:
                    slow.append(round(at - began, 1))
            elif message["type"] == "error":
                refused += 1

    reader = asyncio.ensure_future(read())
    tick = 0
    try:
        while time.monotonic() - began < seconds:
            plan = [("5!", 5)]
            if tick % 25 == 0:
                plan.append(("~100000!", LIGHT_BIG_FIRST_N + tick // 25))
            if tick % 5 == 0:
                plan.append(("small", 200 + tick // 5))
            for kind, n in plan:
                ref = f"{kind}-{tick}"
                sent[ref] = (kind, time.monotonic())
                asked[kind] += 1
                await client.send({"type": "factorial", "number": n, "ref": ref})
            tick += 1
            await asyncio.sleep(0.2)  # the light client's pace: part of the scenario
        # Answers still on their way get a grace, then count as unanswered.
        grace_ends = time.monotonic() + GRACE_S
        while sum(map(len, times.values())) + refused < sum(asked.values()) and time.monotonic() < grace_ends:
            await asyncio.sleep(0.05)  # polling inside the grace, which is a duration: missing answers count
    finally:
        reader.cancel()
        client.close()
    return {"asked": asked, "times": times, "refused": refused, "slow_5!_sent_at_s": slow}


async def scenario(url: str, redis_url: str, connections: int, requests_each: int, seconds: float) -> dict:
    """Run the heavy host and the light client together; the figures of both, and the hard queue's peak."""
    context = multiprocessing.get_context("spawn")
    heavy_results = context.Queue()
    heavy = context.Process(target=_heavy_process,
                            args=(url, connections, requests_each, seconds + GRACE_S, heavy_results))
    redis = Redis.from_url(redis_url)
    peak = 0

    async def watch_queue():
        nonlocal peak
        while True:
            peak = max(peak, jobs_waiting(redis, "hard"))
            await asyncio.sleep(0.25)  # the sampling interval, until the scenario cancels it

    watcher = asyncio.ensure_future(watch_queue())
    heavy.start()
    try:
        # The light client starts once the burst is under way: the heavy host's first jobs are in Redis.
        await async_wait_until(lambda: next(redis.scan_iter("rq:job:*", count=1000), None), timeout=30,
                               interval=0.05, what="the heavy host's burst to begin")
        light = await light_client(url, seconds)
        heavy_outcome = await asyncio.get_running_loop().run_in_executor(None, heavy_results.get, True, 120)
    finally:
        watcher.cancel()
        heavy.join(30)
        if heavy.is_alive():
            heavy.kill()
    return {"heavy": heavy_outcome, "light": light, "hard_queue_peak": peak}


def summary(figures: dict, seconds: float) -> dict:
    light = figures["light"]
    five = sorted(light["times"]["5!"])
    big = sorted(light["times"]["~100000!"])

    def pct(values, q):
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1) if values else None

    return {
        "heavy": figures["heavy"],
        "hard_queue_peak": figures["hard_queue_peak"],
        "light_5!_answered": f"{len(five)} of {light['asked']['5!']}",
        "light_5!_ms_p50_p95_max": (pct(five, 0.5), pct(five, 0.95), pct(five, 1.0)),
        "light_100000!_answered": f"{len(big)} of {light['asked']['~100000!']} ({seconds:.0f} s of asking, "
                                  f"then {GRACE_S:.0f} s of waiting)",
        "light_100000!_s_median": round(statistics.median(big), 2) if big else None,
        "light_small_answered": f"{len(light['times']['small'])} of {light['asked']['small']}",
        "light_refused": light["refused"],
        "light_5!_over_0.5_s_sent_at_s": light["slow_5!_sent_at_s"],
        "server_longest_loop_stall_ms": figures.get("loop", {}).get("max_lag_ms"),
        "server_longest_loop_busy_ms": figures.get("loop", {}).get("max_busy_ms"),
    }


@pytest.mark.slow
@pytest.mark.gen_test(timeout=180)
async def test_the_limits_hold_a_heavy_host_back_and_the_light_client_is_never_refused(redis_url, make_server,
                                                                                       make_worker):
    limits = {"client_max_connections": 20, "client_max_in_flight": 60, "client_max_requests_per_s": 100}
    server = make_server(**limits)
    make_worker()
    figures = await scenario(f"ws://127.0.0.1:{server.port}/ws", redis_url, connections=40, requests_each=10,
                             seconds=6)
    heavy, light = figures["heavy"], figures["light"]
    assert heavy["connected"] == 20 and heavy["refused_429"] == 20, heavy
    # 200 requests, at most 60 in flight at once: the rest are refused and enqueue nothing.
    assert heavy["acks"] <= 60 + heavy["results"] and heavy["rate_limited"] > 0, heavy
    assert figures["hard_queue_peak"] <= 60
    assert light["refused"] == 0 and light["asked"]["5!"] >= 20
    assert len(light["times"]["5!"]) >= light["asked"]["5!"] - 1  # the last may still be on its way


def main(argv: list[str]) -> None:
    connections, requests_each, seconds = (int(argv[0]) if argv else 200, int(argv[1]) if len(argv) > 1 else 50,
                                           float(argv[2]) if len(argv) > 2 else 40)
    defaults = Settings()
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = RedisServer(Path(tmp) / "redis").start()
        try:
            for name, env in (("limits at their defaults", {}), ("limits off", NO_LIMITS)):
                Redis.from_url(redis_server.url).flushall()
                probe = free_port()
                server = ServedApp(redis_server.url, loop_lag_port=probe, **env).start()
                workers = [WorkerProcess(redis_server.url).start() for _ in range(2)]
                try:
                    figures = asyncio.run(scenario(f"ws://127.0.0.1:{server.port}/ws", redis_server.url,
                                                   connections, requests_each, seconds))
                    with urllib.request.urlopen(f"http://127.0.0.1:{probe}/", timeout=5) as reply:
                        figures["loop"] = json.loads(reply.read())
                finally:
                    for worker in workers:
                        worker.stop()
                    server.stop()
                print(f"--- {name} (CLIENT_MAX_CONNECTIONS={defaults.client_max_connections if not env else 0}, "
                      f"CLIENT_MAX_IN_FLIGHT={defaults.client_max_in_flight if not env else 0}, "
                      f"CLIENT_MAX_REQUESTS_PER_S={defaults.client_max_requests_per_s if not env else 0}); "
                      f"heavy host: {connections} connections x {requests_each} requests, n from {HEAVY_FIRST_N}")
                print(json.dumps(summary(figures, seconds), indent=1))
        finally:
            redis_server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
