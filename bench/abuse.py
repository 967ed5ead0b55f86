"""The abuse soak: clients that stay inside every per-client limit and still try to hurt, against a normal one.

    python -m bench -s abuse                 # 10 minutes
    python -m bench -s abuse --minutes 1

A stack of its own: Redis (``REDIS_MAXMEMORY`` of ``--redis-maxmemory``,
volatile-lru), one ``LaneWorker`` on ``soft`` and one on ``hard``, one server
with every per-client limit at its default. Each client has a loopback
address of its own, so the server sees six clients:

- non-reader (127.0.0.10): asks for the stored 100000! (456 KB) every 5 ms
  on a bare socket with a small receive buffer and reads nothing; when the
  server closes it (``CLIENT_MAX_UNSENT_BYTES``), it connects again;
- refill (127.0.0.11): connects, sends 10 distinct hard jobs, disconnects,
  twice a second (``CLIENT_MAX_QUEUED`` holds its backlog);
- post-delete (127.0.0.12): ``POST`` a distinct hard n, then ``DELETE`` it,
  back to back;
- foreign-delete (127.0.0.13): for each hard job the normal client waits for,
  asks for the same n over a WebSocket and cancels it, and sends
  ``DELETE /api/tasks/<id>``: it must never stop it;
- normal (127.0.0.2): asks 5! one at a time, every 50 ms, timing each answer,
  and every 2 s a distinct hard n, which must end in its success.

Every ``--every`` seconds it samples the server's RSS (/proc), Redis's
``used_memory`` (INFO memory) and the normal client's 5! latencies since the
last sample. The table is printed and saved, as Markdown and JSON, in
``var/bench/abuse.md`` and ``abuse.json`` (outside the tracked tree).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from bench import stack as stacks
from bench.scenarios import percentile
from settings import Settings

log = logging.getLogger("bench.abuse")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "var" / "bench" / "abuse.json"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SLOWLOG_KEPT = 10_000
STORED_BIG = 100_000
NORMAL, NON_READER, REFILL, POST_DELETE, FOREIGN = "127.0.0.2", "127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13"
NON_READER_EVERY_S = 0.005
NORMAL_EVERY_S = 0.05
VICTIM_EVERY_S = 2.0
REFILL_EVERY_S, REFILL_JOBS = 0.5, 10
# Distinct hard numbers of each client, far apart so no two clients share a job by chance.
REFILL_FIRST, POST_DELETE_FIRST, VICTIM_FIRST = 1_001, 300_000, 40_000


def default_limits() -> dict[str, str]:
    """The per-client limits at their defaults: the benchmark's other servers lift them (bench.stack.UNLIMITED)."""
    d = Settings()
    return {"MAX_REQUESTS_PER_S": str(d.max_requests_per_s), "CLIENT_MAX_CONNECTIONS": str(d.client_max_connections),
            "CLIENT_MAX_IN_FLIGHT": str(d.client_max_in_flight),
            "CLIENT_MAX_REQUESTS_PER_S": str(d.client_max_requests_per_s),
            "CLIENT_MAX_OPENING_CONNECTIONS": str(d.client_max_opening_connections),
            "CLIENT_MAX_UNSENT_BYTES_TOTAL": str(d.client_max_unsent_bytes_total)}


@dataclass
class Tally:
    """What each client did and got, cumulative."""

    counts: dict[str, int] = field(default_factory=dict)
    five_ms: list[float] = field(default_factory=list)  # the normal client's 5!, since the last sample
    all_five_ms: list[float] = field(default_factory=list)  # and over the whole run

    def add(self, name: str, by: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + by


async def ws(url: str, address: str):
    return await websocket_connect(HTTPRequest(url, network_interface=address), max_message_size=MAX_MESSAGE_BYTES)


# --- the normal client, and the one that cancels its jobs ----------------------------------

async def normal(url: str, tally: Tally, victims: asyncio.Queue, stop: asyncio.Event) -> None:
    """5! one at a time; every VICTIM_EVERY_S a distinct hard n, handed to the foreign canceller."""
    connection = await ws(url, NORMAL)
    waiting: dict[str, float] = {}  # ref -> sent at
    victim_at = 0.0
    counter = itertools.count()
    try:
        while not stop.is_set():
            now = time.monotonic()
            if now - victim_at >= VICTIM_EVERY_S:
                victim_at = now
                n = VICTIM_FIRST + next(counter)
                await connection.write_message(json.dumps({"type": "factorial", "number": n, "ref": f"v{n}"}))
                tally.add("victim asked")
            ref = f"f{next(counter)}"
            waiting[ref] = time.monotonic()
            await connection.write_message(json.dumps({"type": "factorial", "number": 5, "ref": ref}))
            while ref in waiting:
                message = json.loads(await asyncio.wait_for(connection.read_message(), 30))
                got = message.get("ref", "")
                if message["type"] == "result" and got.startswith("v"):
                    victims.put_nowait((int(got[1:]), message["task_id"]))
                elif message["type"] == "success" and got.startswith("v"):
                    tally.add("victim success")
                elif message["type"] == "success" and got in waiting:
                    took = (time.monotonic() - waiting.pop(got)) * 1000
                    tally.five_ms.append(took)
                    tally.all_five_ms.append(took)
                elif message["type"] == "error":
                    tally.add(f"normal error {message['code']}")
                    waiting.pop(got, None)
            await asyncio.sleep(NORMAL_EVERY_S)
    finally:
        connection.close()


async def foreign_canceller(url: str, http_url: str, tally: Tally, victims: asyncio.Queue,
                            stop: asyncio.Event) -> None:
    """Asks for the normal client's n (so it gets the same task_id), cancels it, and DELETEs it over HTTP."""
    http = AsyncHTTPClient()
    connection = await ws(url, FOREIGN)
    try:
        while not stop.is_set():
            try:
                n, task_id = await asyncio.wait_for(victims.get(), 1.0)
            except asyncio.TimeoutError:
                continue
            await connection.write_message(json.dumps({"type": "factorial", "number": n}))
            ack = json.loads(await connection.read_message())
            tally.add("foreign same task_id" if ack.get("task_id") == task_id else "foreign other task_id")
            await connection.write_message(json.dumps({"type": "cancel", "task_id": task_id}))
            answer = json.loads(await connection.read_message())
            while answer["type"] != "cancelled":  # a pushed status or success of its own request
                answer = json.loads(await connection.read_message())
            tally.add(f"foreign cancel {answer['job']}")
            try:
                reply = await http.fetch(HTTPRequest(f"{http_url}/api/tasks/{task_id}", method="DELETE",
                                                     network_interface=FOREIGN))
                tally.add(f"foreign DELETE {json.loads(reply.body)['job']}")
            except HTTPClientError as err:
                tally.add(f"foreign DELETE HTTP {err.code}")
    finally:
        connection.close()


# --- the abusers ----------------------------------------------------------------------------

class NonReader:
    """A bare socket: the WebSocket handshake, then requests written and nothing ever read."""

    def __init__(self, host: str, port: int, address: str):
        self.host, self.port, self.address = host, port, address

    async def run(self, tally: Tally, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        frame = _masked(json.dumps({"type": "factorial", "number": STORED_BIG}).encode())
        while not stop.is_set():
            sock = await loop.run_in_executor(None, self._connect)
            tally.add("non-reader connections")
            try:
                while not stop.is_set():
                    await asyncio.wait_for(loop.sock_sendall(sock, frame), 10)
                    tally.add("non-reader requests")
                    await asyncio.sleep(NON_READER_EVERY_S)
            except (OSError, asyncio.TimeoutError):
                tally.add("non-reader closed by the server")
            finally:
                sock.close()

    def _connect(self) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.settimeout(10)
        sock.bind((self.address, 0))
        sock.connect((self.host, self.port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(f"GET /ws HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)  # byte by byte: not one byte past the handshake is read
            if not chunk or len(head) > 65536:
                raise OSError(f"handshake failed: {head!r}")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise OSError(f"handshake refused: {head.splitlines()[0]!r}")
        sock.setblocking(False)
        return sock


def _masked(payload: bytes) -> bytes:
    """A masked text frame (RFC 6455, section 5.2: a client masks every frame); payloads under 126 bytes."""
    mask = os.urandom(4)
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def refill(url: str, tally: Tally, stop: asyncio.Event) -> None:
    """Connect, send REFILL_JOBS distinct hard jobs, read their acknowledgements, disconnect; again."""
    numbers = itertools.count(REFILL_FIRST)
    while not stop.is_set():
        connection = await ws(url, REFILL)
        try:
            for _ in range(REFILL_JOBS):
                await connection.write_message(json.dumps({"type": "factorial", "number": next(numbers)}))
            answered = 0
            while answered < REFILL_JOBS:
                message = json.loads(await asyncio.wait_for(connection.read_message(), 30))
                if message["type"] == "result":
                    tally.add("refill acknowledged")
                elif message["type"] == "error":
                    tally.add(f"refill {message['code']}")
                else:
                    continue  # a status or success of an earlier job
                answered += 1
        finally:
            connection.close()
        await asyncio.sleep(REFILL_EVERY_S)


async def post_delete(http_url: str, tally: Tally, stop: asyncio.Event) -> None:
    """POST a distinct hard n, DELETE it at once; again, as fast as the answers come."""
    http = AsyncHTTPClient()
    numbers = itertools.count(POST_DELETE_FIRST)
    while not stop.is_set():
        try:
            posted = await http.fetch(HTTPRequest(f"{http_url}/api/factorial", method="POST",
                                                  body=json.dumps({"number": next(numbers)}),
                                                  network_interface=POST_DELETE))
            task_id = json.loads(posted.body)["task_id"]
            deleted = await http.fetch(HTTPRequest(f"{http_url}/api/tasks/{task_id}", method="DELETE",
                                                   network_interface=POST_DELETE))
            tally.add(f"post-delete {json.loads(deleted.body)['job']}")
        except HTTPClientError as err:
            tally.add(f"post-delete HTTP {err.code}")
            await asyncio.sleep(0.05)  # as Retry-After asks, roughly


# --- sampling --------------------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def sample(stack: stacks.Stack, server: stacks.Server, tally: Tally, began: float) -> dict:
    redis = stack.redis
    five, tally.five_ms = tally.five_ms, []
    waiting = redis.llen("rq:queue:hard") + int(redis.get("factorial:pending-count:hard") or 0)
    return {
        "t_s": round(time.monotonic() - began),
        "server_rss_mb": round(rss_mb(server.process.pid), 1),
        "redis_used_mb": round(redis.info("memory")["used_memory"] / 2**20, 1),
        "redis_keys": redis.dbsize(),
        "load_1min": round(os.getloadavg()[0], 1),  # the machine is shared: its load beside each figure
        "hard_waiting": waiting,
        "five_count": len(five),
        "five_p50_ms": round(percentile(five, 50), 1) if five else None,
        "five_p95_ms": round(percentile(five, 95), 1) if five else None,
        "five_ms": [round(x, 1) for x in five],  # for the minutes' percentiles (per_minute)
        "non_reader_closed": tally.counts.get("non-reader closed by the server", 0),
        "refill_limited": tally.counts.get("refill rate_limited", 0),
        "post_delete_cycles": sum(v for k, v in tally.counts.items() if k.startswith("post-delete ")),
        "counts": dict(tally.counts),
    }


COLUMNS = (("t (s)", "t_s"), ("server RSS (MB)", "server_rss_mb"), ("Redis used_memory (MB)", "redis_used_mb"),
           ("Redis keys", "redis_keys"), ("hard jobs waiting", "hard_waiting"), ("5! answered", "five_count"),
           ("5! p50 (ms)", "five_p50_ms"), ("5! p95 (ms)", "five_p95_ms"),
           ("non-reader closed (1008)", "non_reader_closed"), ("refill rate_limited", "refill_limited"),
           ("POST+DELETE cycles", "post_delete_cycles"), ("load (1 min)", "load_1min"))


def markdown(samples: list[dict]) -> str:
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for s in samples:
        lines.append("| " + " | ".join("" if s[k] is None else str(s[k]) for _, k in COLUMNS) + " |")
    return "\n".join(lines)


def per_minute(samples: list[dict]) -> str:
    """The samples a minute at a time, for docs: the highest RSS, Redis at the minute's end, the
    normal client's 5! percentiles over the minute."""
    minutes: dict[int, list[dict]] = {}
    for s in samples:
        minutes.setdefault(max(0, (s["t_s"] - 1) // 60), []).append(s)
    lines = ["| minute | server RSS, highest (MB) | Redis used_memory at its end (MB) | hard jobs waiting, highest "
             "| 5! answered | 5! p50 (ms) | 5! p95 (ms) | 5! p99 (ms) "
             "| non-reader closed (1008), in all | POST+DELETE cycles, in all | load (1 min), highest |",
             "|" + "---|" * 11]
    for minute, group in sorted(minutes.items()):
        five = [x for s in group for x in s["five_ms"]]
        lines.append("| " + " | ".join(str(x) for x in (
            minute + 1, max(s["server_rss_mb"] for s in group), group[-1]["redis_used_mb"],
            max(s["hard_waiting"] for s in group), sum(s["five_count"] for s in group),
            *(round(percentile(five, q), 1) if five else "" for q in (50, 95, 99)),
            group[-1]["non_reader_closed"], group[-1]["post_delete_cycles"], max(s["load_1min"] for s in group),
        )) + " |")
    return "\n".join(lines)


# --- the run ---------------------------------------------------------------------------------

async def soak(stack: stacks.Stack, server: stacks.Server, seconds: float, every_s: float,
               alone: bool = False) -> tuple[list[dict], list[float]]:
    """The samples, and every 5! latency of the normal client (ms)."""
    url = server.url
    http_url = url.replace("ws://", "http://").removesuffix("/ws")
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    # The stored 100000! the non-reader asks for, made first.
    first = await ws(url, NORMAL)
    await first.write_message(json.dumps({"type": "factorial", "number": STORED_BIG}))
    while json.loads(await asyncio.wait_for(first.read_message(), 60))["type"] != "success":
        pass
    first.close()

    # Every command over 10 ms during the run, kept for the report (redis_footprint).
    stack.redis.config_set("slowlog-max-len", SLOWLOG_KEPT)
    stack.redis.slowlog_reset()
    tally, stop, victims = Tally(), asyncio.Event(), asyncio.Queue()
    clients = {"normal": normal(url, tally, victims, stop)}
    if not alone:
        clients.update({
            "foreign": foreign_canceller(url, http_url, tally, victims, stop),
            "non-reader": NonReader(host, int(port), NON_READER).run(tally, stop),
            "refill": refill(url, tally, stop),
            "post-delete": post_delete(http_url, tally, stop),
        })
    else:  # the baseline: no one takes the normal client's hard jobs from the queue of victims
        victims = asyncio.Queue()
    tasks = {name: asyncio.ensure_future(coroutine) for name, coroutine in clients.items()}
    began = time.monotonic()
    samples = []
    try:
        while time.monotonic() - began < seconds:
            await asyncio.sleep(min(every_s, seconds - (time.monotonic() - began)) + 0.001)
            for name, task in tasks.items():
                if task.done():
                    raise RuntimeError(f"the {name} client stopped: {task.exception()!r}")
            samples.append(await asyncio.to_thread(sample, stack, server, tally, began))
            log.info("%s", {k: v for k, v in samples[-1].items() if k not in ("counts", "five_ms")})
    finally:
        stop.set()
        done, running = await asyncio.wait(tasks.values(), timeout=15)
        for task in running:
            task.cancel()
    return samples, tally.all_five_ms


def redis_footprint(redis) -> dict:
    """Where Redis's memory went: bytes by key pattern (ids replaced by *), and its slow log."""
    slow = redis.slowlog_get(SLOWLOG_KEPT)  # first: the SCANs below are slow commands too
    by_pattern: dict[str, list[int]] = {}
    names = list(redis.scan_iter(count=1000))
    for i in range(0, len(names), 1000):
        with redis.pipeline(transaction=False) as pipe:
            for name in names[i : i + 1000]:
                pipe.memory_usage(name, samples=0)
            sizes = pipe.execute()
        for name, size in zip(names[i : i + 1000], sizes):
            pattern = ":".join("*" if len(part) >= 16 or part.isdigit() else part
                               for part in name.decode(errors="replace").split(":"))
            by_pattern.setdefault(pattern, [0, 0])
            by_pattern[pattern][0] += 1
            by_pattern[pattern][1] += size or 0
    return {
        "keys_by_pattern": {k: {"keys": c, "mb": round(b / 2**20, 2), "bytes_each": b // c}
                            for k, (c, b) in sorted(by_pattern.items(), key=lambda kv: -kv[1][1])[:15]},
        "slowlog_over_10ms": len(slow),
        "slowlog_longest_ms": round(max((e["duration"] for e in slow), default=0) / 1000, 1),
        "slowlog_longest": [(round(e["duration"] / 1000, 1), str(e["command"])[:80])
                            for e in sorted(slow, key=lambda e: -e["duration"])[:3]],
    }


def main(minutes: float, every_s: float, redis_maxmemory: str, json_path: Path = RESULTS, alone: bool = False) -> int:
    stack = stacks.own_redis(maxmemory=redis_maxmemory)
    try:
        stack.start_workers(2, "jobs.worker.LaneWorker")
        server = stack.start_server(default_limits())
        samples, five_ms = asyncio.run(soak(stack, server, minutes * 60, every_s, alone))
        footprint = redis_footprint(stack.redis)
    finally:
        stack.close()
    counts = samples[-1]["counts"] if samples else {}
    fives = [s for s in samples if s["five_p95_ms"] is not None]
    summary = {
        "server_rss_mb_min_max": [min(s["server_rss_mb"] for s in samples), max(s["server_rss_mb"] for s in samples)],
        "redis_used_mb_min_max": [min(s["redis_used_mb"] for s in samples), max(s["redis_used_mb"] for s in samples)],
        "five_ms_p50_p95_p99_over_the_run": ([round(percentile(five_ms, q), 1) for q in (50, 95, 99)]
                                             if five_ms else None),
        "five_answered": len(five_ms),
        "five_p95_ms_max": max((s["five_p95_ms"] for s in fives), default=None),
        "five_p95_ms_median": sorted(s["five_p95_ms"] for s in fives)[len(fives) // 2] if fives else None,
        "counts": counts,
        "redis": footprint,
    }
    what = "normal client alone (baseline)" if alone else "abuse soak"
    text = (f"{what}, {minutes:g} min, a sample every {every_s:g} s, Redis maxmemory {redis_maxmemory}, "
            f"per-client limits at their defaults, commit {_commit()}\n\n{markdown(samples)}\n\n"
            f"A minute at a time:\n\n{per_minute(samples)}\n\n"
            + "\n".join(f"- {k}: {v}" for k, v in counts.items())
            + f"\n\nsummary: {json.dumps({k: v for k, v in summary.items() if k not in ('counts', 'redis')})}"
            + f"\n\nRedis at the end: {json.dumps(footprint, indent=1)}")
    print(text)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"minutes": minutes, "every_s": every_s, "redis_maxmemory": redis_maxmemory,
                                     "alone": alone,
                                     "samples": samples, "summary": summary, "table": text}, indent=1))
    json_path.with_suffix(".md").write_text(text + "\n")
    log.info("saved %s and %s", json_path, json_path.with_suffix(".md"))
    return 0


def _commit() -> str:
    from bench.__main__ import commit

    return commit()
