"""The scenarios: each measures the service and, in the same run, the floor it is compared with."""

from __future__ import annotations

import asyncio
import json
import random
import resource
import logging
import time
from dataclasses import asdict, dataclass

from bench.client import Client, Expected, Wrong, gmpy2_time, rq_direct
from bench.stack import Stack

log = logging.getLogger(__name__)
SMALL = range(1, 1001)  # the numbers of the soft queue


@dataclass
class Row:
    scenario: str
    measure: str
    value: float
    unit: str
    floor_name: str = ""
    floor: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    loop_lag_ms: float | None = None  # the server's longest IOLoop stall during the scenario (wall time)
    loop_busy_ms: float | None = None  # the loop thread's own CPU time within its longest stall

    @property
    def ratio(self) -> float | None:
        if self.floor in (None, 0):
            return None
        return self.value / self.floor

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def _lag(reading: dict) -> str:
    if not reading:
        return "?"
    return (f"{reading.get('max_lag_ms', 0):.0f} ms ({reading.get('max_busy_ms', 0):.0f}), "
            f"{reading.get('full_gcs', 0)} full GC, longest GC {reading.get('max_gc_ms', 0):.0f} ms "
            f"(generation {reading.get('max_gc_generation', 0)})")


def forget_numbers(stack: Stack) -> None:
    """Drop the number -> job index, so every number is new to the service again."""
    client = stack.redis
    keys = list(client.scan_iter("factorial:by-number:*", count=10_000))
    for i in range(0, len(keys), 10_000):
        client.delete(*keys[i : i + 10_000])


class Scenarios:
    def __init__(self, stack: Stack, quick: bool, workers: int):
        self.stack = stack
        self.quick = quick
        self.workers = workers
        self.expected = Expected()
        self.url = stack.servers[0].url

    # --- 1. small-job latency -----------------------------------------------

    async def latency(self) -> list[Row]:
        samples = 100 if self.quick else 400
        forget_numbers(self.stack)
        numbers = random.sample(list(SMALL), min(samples, len(SMALL)))
        client = await Client.connect(self.url)
        uncached, acks = [], []
        try:
            for n in numbers:
                started = time.perf_counter()
                ack, raw = await client.factorial_raw(n)
                uncached.append(time.perf_counter() - started)
                acks.append(client.acked_at - started)
                self.expected.check(n, raw, ack["task_id"])
            cached = []
            for _ in range(samples):
                started = time.perf_counter()
                ack, raw = await client.factorial_raw(5)
                cached.append(time.perf_counter() - started)
                self.expected.check(5, raw, ack["task_id"])
        finally:
            client.close()
        _, direct = await asyncio.to_thread(rq_direct, self.stack.redis, numbers, 1)
        floor = f"RQ direct, {self.workers} x {self.stack.worker_class.rsplit('.', 1)[-1]}"
        rows = []
        for q in (50, 99):
            value, base = percentile(uncached, q) * 1000, percentile(direct, q) * 1000
            rows.append(Row("latency, 1 client, distinct small n", f"p{q}", value, "ms", floor, base,
                            "< 10 ms and <= 1.3x floor" if q == 50 else "",
                            value < 10 and value <= 1.3 * base if q == 50 else None,
                            f"acknowledged after {percentile(acks, q) * 1000:.2f} ms"))
        for q in (50, 99):
            rows.append(Row("latency, 1 client, 5! cached", f"p{q}", percentile(cached, q) * 1000, "ms",
                            floor, percentile(direct, q) * 1000))
        return rows

    # --- 2. throughput ------------------------------------------------------

    async def throughput(self) -> list[Row]:
        rows = []
        levels = (1, 10, 100) if self.quick else (1, 10, 100, 1000)
        for clients in levels:
            jobs = 1000 if clients > 1 else (200 if self.quick else 500)
            if self.quick:
                jobs = min(jobs, 400)
            forget_numbers(self.stack)
            numbers = random.sample(list(SMALL), jobs)
            wall, latencies, lost = await self._clients_run(clients, numbers)
            service_cpu = self.last_cpu
            before = self._cpu()
            direct_wall, direct_lat = await asyncio.to_thread(rq_direct, self.stack.redis, numbers, clients)
            direct_cpu = {k: round((v - before.get(k, 0.0)) / jobs * 1000, 3) for k, v in self._cpu().items()}
            log.info("%d clients: CPU ms per job, service %s; RQ direct %s", clients, service_cpu, direct_cpu)
            floor = f"RQ direct, {self.workers} x {self.stack.worker_class.rsplit('.', 1)[-1]}, {clients} in flight"
            rate, base = jobs / wall, jobs / direct_wall
            target = ">= 0.9x floor" if clients == 100 else ""
            rows.append(Row(f"throughput, {clients} clients, {jobs} distinct small n", "jobs/s", rate, "jobs/s",
                            floor, base, target, rate >= 0.9 * base if target else None,
                            f"lost {lost}; CPU ms/job " + ", ".join(f"{k} {v:.2f}" for k, v in service_cpu.items())))
            rows.append(Row(f"throughput, {clients} clients, {jobs} distinct small n", "p99",
                            percentile(latencies, 99) * 1000, "ms", floor, percentile(direct_lat, 99) * 1000,
                            note="floor CPU ms/job " + ", ".join(f"{k} {v:.2f}" for k, v in direct_cpu.items())))
            if lost:
                raise Wrong(f"{lost} of {jobs} requests got no exact answer")
        return rows

    async def _clients_run(self, clients: int, numbers: list[int]) -> tuple[float, list[float], int]:
        """``clients`` connections share ``numbers``, each asking one at a time; connecting is not timed."""
        connections = await asyncio.gather(*(Client.connect(self.url) for _ in range(clients)))
        shares = [numbers[i::clients] for i in range(clients)]
        latencies: list[float] = []
        lost = 0

        async def run(client: Client, share: list[int]) -> None:
            nonlocal lost
            for n in share:
                started = time.perf_counter()
                try:
                    ack, raw = await client.factorial_raw(n)
                    latencies.append(time.perf_counter() - started)
                    self.expected.check(n, raw, ack["task_id"])
                except (Wrong, ConnectionError, asyncio.TimeoutError) as exc:
                    log.warning("%d!: no exact answer: %r", n, exc)
                    lost += 1

        cpu_before = self._cpu()
        started = time.perf_counter()
        await asyncio.gather(*(run(c, s) for c, s in zip(connections, shares)))
        wall = time.perf_counter() - started
        self.last_cpu = {k: round((v - cpu_before.get(k, 0.0)) / len(numbers) * 1000, 3)
                         for k, v in self._cpu().items()}
        for c in connections:
            c.close()
        return wall, latencies, lost

    def _cpu(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {**self.stack.cpu_seconds(), "bench client": usage.ru_utime + usage.ru_stime}

    async def rq_simple_floor(self) -> list[Row]:
        """RQ's own SimpleWorker, directly, as the old service's best measured setup."""
        if not self.stack.owned:
            return []  # a running stack's workers are not ours to replace
        numbers = random.sample(list(SMALL), 1000)
        current = self.stack.worker_class
        await asyncio.to_thread(self.stack.start_workers, self.workers, "rq.worker.SimpleWorker")
        try:
            wall, _ = await asyncio.to_thread(rq_direct, self.stack.redis, numbers, 100)
        finally:
            await asyncio.to_thread(self.stack.start_workers, self.workers, current)
        return [Row("throughput floor: RQ direct, stock SimpleWorker", "jobs/s", 1000 / wall, "jobs/s",
                    note=f"{self.workers} x rq.worker.SimpleWorker, 100 in flight")]

    # --- 3. big results -----------------------------------------------------

    async def big(self) -> list[Row]:
        rows = []
        numbers = (1000, 10_000, 100_000) if self.quick else (1000, 10_000, 100_000, 1_000_000)
        client = await Client.connect(self.url)
        try:
            for n in numbers:
                forget_numbers(self.stack)
                started = time.perf_counter()
                ack, raw = await client.factorial_raw(n)
                elapsed = time.perf_counter() - started
                self.expected.check(n, raw, ack["task_id"])
                floor = await asyncio.to_thread(gmpy2_time, n)
                target, met = "", None
                if n == 100_000:
                    target, met = "< 150 ms", elapsed < 0.15
                elif n == 1_000_000:
                    target, met = "<= 2x floor", elapsed <= 2 * floor
                rows.append(Row(f"big result, {n}! end to end", "time", elapsed * 1000, "ms",
                                "in-process gmpy2 fac + digits", floor * 1000, target, met,
                                f"{len(raw)} bytes"))
        finally:
            client.close()
        return rows

    # --- 4. hot key ---------------------------------------------------------

    async def hot_key(self) -> list[Row]:
        n, clients = 100_000, (100 if self.quick else 1000)
        forget_numbers(self.stack)
        single = await Client.connect(self.url)
        started = time.perf_counter()
        ack, raw = await single.factorial_raw(n)
        alone = time.perf_counter() - started
        single.close()
        self.expected.check(n, raw, ack["task_id"])

        forget_numbers(self.stack)
        connections = await asyncio.gather(*(Client.connect(self.url) for _ in range(clients)))
        cpu_before = self._cpu()
        started = time.perf_counter()
        answers = await asyncio.gather(*(c.factorial_raw(n) for c in connections), return_exceptions=True)
        elapsed = time.perf_counter() - started
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in self._cpu().items()}
        for c in connections:
            c.close()
        good = [a for a in answers if not isinstance(a, BaseException)]
        task_ids = {ack["task_id"] for ack, _ in good}
        # No ref: every exact answer is the same bytes, so one check covers all.
        first = good[0][1] if good else b""
        if good:
            self.expected.check(n, first, good[0][0]["task_id"])
        exact = sum(1 for _, raw in good if raw == first)
        return [Row(f"hot key, {clients} clients ask {n}! at once", "all answered", elapsed * 1000, "ms",
                    "one client alone", alone * 1000, "1 job, all exact, <= 2x floor",
                    len(task_ids) == 1 and exact == clients and elapsed <= 2 * alone,
                    f"jobs {len(task_ids)}, exact {exact}/{clients}; {clients * len(first) / elapsed / 1e6:.0f} MB/s "
                    "delivered; CPU s " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))]

    # --- 5. held connections ------------------------------------------------

    async def held(self) -> list[Row]:
        count = 1000 if self.quick else 10_000
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        server = self.stack.servers[0]
        before = server.probe().get("rss_bytes", 0)
        forget_numbers(self.stack)
        started = time.perf_counter()
        opened = await asyncio.gather(*(Client.connect(self.url) for _ in range(count)), return_exceptions=True)
        connect_s = time.perf_counter() - started
        connections = [c for c in opened if isinstance(c, Client)]
        failures = count - len(connections)
        opening = server.probe(reset=True)
        after = opening.get("rss_bytes", 0)
        numbers = [SMALL[i % len(SMALL)] for i in range(len(connections))]

        async def ask(client: Client, n: int) -> bool:
            try:
                ack, raw = await client.factorial_raw(n)
                self.expected.check(n, raw, ack["task_id"])
                return True
            except (Wrong, ConnectionError, asyncio.TimeoutError):
                return False

        started = time.perf_counter()
        results = await asyncio.gather(*(ask(c, n) for c, n in zip(connections, numbers)))
        answer_s = time.perf_counter() - started
        answering = server.probe()
        for c in connections:
            c.close()
        exact = sum(results)
        per_connection = (after - before) / max(len(connections), 1) / 1024 if before and after else 0.0
        name = f"held connections, {count} opened at once"
        # The probe was reset between the phases: the scenario's figure is the worse of the two.
        phases = [r for r in (opening, answering) if r]
        lag = max((r["max_lag_ms"] for r in phases), default=None)
        busy = max((r["max_busy_ms"] for r in phases), default=None)
        rows = [
            Row(name, "answered exactly", exact, "connections", "opened", count, "all accepted and answered",
                exact == count, f"connect failures {failures}; connect {connect_s:.1f} s, answers {answer_s:.1f} s; "
                f"loop lag (busy) while connecting {_lag(opening)}, while answering {_lag(answering)}"),
            Row(name, "server memory per connection", per_connection, "KiB", note=f"RSS {before >> 20} -> {after >> 20} MiB"),
        ]
        for row in rows:
            row.loop_lag_ms, row.loop_busy_ms = lag, busy
        return rows

    # --- 6. compression -----------------------------------------------------

    async def compression(self) -> list[Row]:
        if len(self.stack.servers) < 2:
            return []
        n, rows = 100_000, []
        timings = {}
        for name, server, offer in (("off", self.stack.servers[0], False), ("on", self.stack.servers[1], True)):
            forget_numbers(self.stack)
            server.probe(reset=True)
            client = await Client.connect(server.url, compression=offer)
            started = time.perf_counter()
            ack, raw = await client.factorial_raw(n)
            timings[name] = time.perf_counter() - started
            client.close()
            self.expected.check(n, raw, ack["task_id"])
            timings[name + "_lag"] = server.probe().get("max_lag_ms", 0.0)
        rows.append(Row(f"permessage-deflate, {n}! on loopback", "end to end, compressed", timings["on"] * 1000,
                        "ms", "uncompressed", timings["off"] * 1000,
                        note=f"server loop lag {timings['on_lag']:.0f} ms compressed, {timings['off_lag']:.0f} ms not"))
        return rows

    # --- 7. scale out -------------------------------------------------------

    async def scale_out(self) -> list[Row]:
        if len(self.stack.servers) < 2:
            return []
        a, b = self.stack.servers[0].url, self.stack.servers[1].url
        forget_numbers(self.stack)
        checked = 0
        for n in (777, 20_000):
            one, two = await Client.connect(a), await Client.connect(b)
            # Ask on one server, then at once wait on the other: it must push the end it did not enqueue.
            await one.send({"type": "factorial", "number": n})
            ack = json.loads(await one.receive_raw())
            raw = await two.lookup_raw(ack["task_id"])
            self.expected.check(n, raw, ack["task_id"])
            # And a lookup of the finished job on the other server answers from the store.
            raw = await two.lookup_raw(ack["task_id"])
            self.expected.check(n, raw, ack["task_id"])
            one.close()
            two.close()
            checked += 1
        return [Row("scale out: 2 servers, 1 Redis, submit on A, look up on B", "exact answers", checked,
                    "jobs", target="all exact", met=checked == 2)]
