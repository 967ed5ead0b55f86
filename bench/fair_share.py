"""The fair-share scenario of issue 11, scaled down to this machine: a light client beside a heavy one.

    python -m bench.fair_share

A stack of its own (Redis, two ``LaneWorker`` workers on ``soft hard``, one
server, per-client limits off). The heavy client (127.0.0.1) opens
HEAVY_CONNECTIONS connections and sends HEAVY_PER_CONNECTION requests for
distinct large n on each, back to back. Meanwhile the light client
(127.0.0.2, another loopback address, so another client) sends 5! every
0.2 s, a distinct n near 90000 every second and a distinct small n every
second, for LIGHT_S seconds. Three runs: the light client alone; with the
heavy one and fair scheduling (QUEUED_JOBS_PER_WORKER=1); with the heavy one
and every job in the RQ queue at once (QUEUED_JOBS_PER_WORKER=1000000,
first come first served, as before fair scheduling).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from bench import stack as stacks

HEAVY_CONNECTIONS = 20
HEAVY_PER_CONNECTION = 20
HEAVY_FIRST = 80_000
LIGHT_S = 10.0
ANSWER_TIMEOUT_S = 120.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

log = logging.getLogger("bench.fair_share")


async def connect(url: str, address: str):
    return await websocket_connect(HTTPRequest(url, network_interface=address), max_message_size=MAX_MESSAGE_BYTES)


async def heavy(url: str, first: int) -> int:
    """Send the heavy backlog; return how many were acknowledged."""
    connections = [await connect(url, "127.0.0.1") for _ in range(HEAVY_CONNECTIONS)]
    numbers = itertools.count(first)
    for connection in connections:
        for _ in range(HEAVY_PER_CONNECTION):
            await connection.write_message(json.dumps({"type": "factorial", "number": next(numbers)}))
    acked = 0
    for connection in connections:
        for _ in range(HEAVY_PER_CONNECTION):
            message = json.loads(await connection.read_message())
            acked += message["type"] == "result"
    for connection in connections:
        connection.close()  # their jobs stay queued: the backlog is what matters
    return acked


async def light(url: str, run: int) -> dict[str, list[float]]:
    """The light client's requests; latency from sending to the success, per kind."""
    connection = await connect(url, "127.0.0.2")
    sent: dict[str, tuple[str, float]] = {}
    latencies: dict[str, list[float]] = {"5!": [], "~90000!": [], "small": []}
    done = asyncio.Event()
    all_answered = asyncio.Event()

    async def read() -> None:
        while True:
            raw = await connection.read_message()
            if raw is None:
                return
            message = json.loads(raw)
            if message["type"] == "success" and message.get("ref") in sent:
                kind, at = sent.pop(message["ref"])
                latencies[kind].append(time.monotonic() - at)
                if done.is_set() and not sent:
                    all_answered.set()

    reader = asyncio.ensure_future(read())
    began = time.monotonic()
    refs = itertools.count()
    tick = 0
    while time.monotonic() - began < LIGHT_S:
        kinds = [("5!", 5)]
        if tick % 5 == 0:
            kinds.append(("~90000!", 90_000 + 1000 * run + tick))
            kinds.append(("small", 200 + 100 * run + tick))
        for kind, number in kinds:
            ref = f"r{next(refs)}"
            sent[ref] = (kind, time.monotonic())
            await connection.write_message(json.dumps({"type": "factorial", "number": number, "ref": ref}))
        tick += 1
        await asyncio.sleep(0.2)
    done.set()
    if not sent:
        all_answered.set()
    try:
        await asyncio.wait_for(all_answered.wait(), ANSWER_TIMEOUT_S)
    except asyncio.TimeoutError:
        pass
    reader.cancel()
    unanswered = len(sent)
    connection.close()
    latencies["unanswered"] = [unanswered]
    return latencies


def summary(latencies: dict[str, list[float]]) -> dict:
    def q(values, p):
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")

    out = {}
    for kind in ("5!", "~90000!", "small"):
        values = latencies[kind]
        out[kind] = {"answered": len(values), "p50_ms": round(q(values, 0.5) * 1000, 1),
                     "p95_ms": round(q(values, 0.95) * 1000, 1), "max_ms": round(max(values, default=0) * 1000, 1)}
    out["unanswered"] = latencies["unanswered"][0]
    return out


async def scenario(url: str, run: int, with_heavy: bool) -> dict:
    heavy_task = asyncio.ensure_future(heavy(url, HEAVY_FIRST + 1000 * run)) if with_heavy else None
    if heavy_task is not None:
        await asyncio.sleep(0.5)  # the burst lands first, as in the issue
    latencies = await light(url, run)
    acked = await heavy_task if heavy_task is not None else 0
    return {**summary(latencies), "heavy_acknowledged": acked}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    results = {}
    for run, (name, per_worker, with_heavy) in enumerate((
            ("light client alone", 1, False),
            ("with the heavy client, fair scheduling", 1, True),
            ("with the heavy client, first come first served", 1_000_000, True))):
        stack = stacks.own_redis("bench-fair-")
        try:
            stack.start_workers(2, "jobs.worker.LaneWorker", queues=("soft", "hard"))
            server = stack.start_server({"QUEUED_JOBS_PER_WORKER": str(per_worker)})
            results[name] = asyncio.run(scenario(server.url, run, with_heavy))
            log.info("%s: %s", name, json.dumps(results[name]))
        finally:
            stack.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
