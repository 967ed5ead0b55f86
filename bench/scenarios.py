"""The scenarios: each measures the service and, in the same run, the ceiling and floor it is compared with.

The ceiling is ``bench.ceiling`` (the same frames answered from memory, no
queue), driven by the same client: the best this client and loopback allow.
The floor is what the service is built on, used directly: RQ with the same
workers, or gmpy2 in this process.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import resource
import time
from dataclasses import asdict, dataclass

from bench.client import Client, Expected, Wrong, gmpy2_time, rq_direct
from bench.stack import STANDARD_LOOP, TWO_PROCESSES, Stack, process_cpu_seconds
from jobs import keys

log = logging.getLogger(__name__)
SMALL = range(1, 1001)  # the numbers of the soft queue
HOT_NUMBER = 100_000
# How long one of the 10,000 connections opened at once may take to be accepted.
HELD_CONNECT_S = 120.0
# Service and ceiling runs alternate this many times, and each reports its
# median: other work on the machine then weighs on both alike.
ROUNDS = 3


@dataclass
class Row:
    scenario: str
    measure: str
    value: float
    unit: str
    ceiling: float | None = None  # the no-queue ceiling's figure, same client, same run
    floor: float | None = None  # the floor's figure, same run
    floor_name: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""
    loop_lag_ms: float | None = None  # the server's longest IOLoop stall during the scenario (wall time)
    loop_busy_ms: float | None = None  # the loop thread's own CPU time within its longest stall

    @property
    def to_ceiling(self) -> float | None:
        return _ratio(self.value, self.ceiling)

    @property
    def to_floor(self) -> float | None:
        return _ratio(self.value, self.floor)

    def as_dict(self) -> dict:
        return {**asdict(self), "to_ceiling": self.to_ceiling, "to_floor": self.to_floor}


def _ratio(value: float, base: float | None) -> float | None:
    return None if base in (None, 0) else value / base


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def _lag(reading: dict) -> str:
    if not reading:
        return "?"
    return (f"{reading.get('max_lag_ms', 0):.0f} ms ({reading.get('max_busy_ms', 0):.0f}), "
            f"{reading.get('full_gcs', 0)} full GC, longest GC {reading.get('max_gc_ms', 0):.0f} ms "
            f"(generation {reading.get('max_gc_generation', 0)})")


def forget_numbers(stack: Stack, numbers: list[int] | None = None) -> None:
    """Drop the number -> job index (of ``numbers``, or all), so those numbers are new to the service again."""
    client = stack.redis
    if numbers is not None:
        found = [keys.by_number(n) for n in numbers]
    else:
        found = list(client.scan_iter(keys.by_number("*"), count=10_000))
    for i in range(0, len(found), 10_000):
        client.delete(*found[i : i + 10_000])


class Scenarios:
    def __init__(self, stack: Stack, quick: bool, workers: int):
        self.stack = stack
        self.quick = quick
        self.workers = workers
        self.expected = Expected()
        self.url = stack.servers[0].url
        self.ceiling_url = stack.ceiling.url
        self.rq_floor = f"RQ direct, {workers} x {stack.worker_class.rsplit('.', 1)[-1]}"

    # --- 1. small-job latency -----------------------------------------------

    async def latency(self) -> list[Row]:
        """5! asked again and again, one request at a time, with nothing cached in the service."""
        samples = 60 if self.quick else 300
        service, ceiling, direct, acks, cached = [], [], [], [], []
        client, top = await Client.connect(self.url), await Client.connect(self.ceiling_url)
        try:
            # Interleaved, one sample of each at a time, so other load weighs on all three alike.
            for _ in range(samples):
                await asyncio.to_thread(forget_numbers, self.stack, [5])
                started = time.perf_counter()
                ack, raw = await client.factorial_raw(5)
                service.append(time.perf_counter() - started)
                acks.append(client.acked_at - started)
                self.expected.check(5, raw, ack["task_id"])
                started = time.perf_counter()
                ack, raw = await top.factorial_raw(5)
                ceiling.append(time.perf_counter() - started)
                self.expected.check(5, raw, ack["task_id"])
                _, one = await asyncio.to_thread(rq_direct, self.stack.redis, [5], 1)
                direct.extend(one)
            for _ in range(samples):
                started = time.perf_counter()
                ack, raw = await client.factorial_raw(5)
                cached.append(time.perf_counter() - started)
                self.expected.check(5, raw, ack["task_id"])
        finally:
            client.close()
            top.close()
        rows = []
        for q in (50, 99):
            value, floor = percentile(service, q) * 1000, percentile(direct, q) * 1000
            rows.append(Row("5!, 1 client, nothing cached", f"p{q}", value, "ms", percentile(ceiling, q) * 1000,
                            floor, self.rq_floor, "<= 1.0x floor" if q == 50 else "",
                            value <= floor if q == 50 else None,
                            f"acknowledged after {percentile(acks, q) * 1000:.2f} ms"))
        rows.append(Row("5!, 1 client, stored result", "p50", percentile(cached, 50) * 1000, "ms",
                        percentile(ceiling, 50) * 1000, percentile(direct, 50) * 1000, self.rq_floor))
        return rows

    # --- 2. throughput ------------------------------------------------------

    async def throughput(self) -> list[Row]:
        rows = []
        levels = ((100, 4), (300, 1)) if self.quick else ((100, 10), (1000, 1))
        for clients, each in levels:
            jobs = clients * each
            numbers = random.sample(list(SMALL), jobs)
            service, ceiling, cpu, ceiling_cpu = [], [], [], []
            for _ in range(ROUNDS):
                await asyncio.to_thread(forget_numbers, self.stack)
                wall, latencies, lost = await self._clients_run(self.url, clients, numbers)
                if lost:
                    raise Wrong(f"{lost} of {jobs} requests got no exact answer")
                service.append((jobs / wall, percentile(latencies, 99) * 1000))
                cpu.append(self.last_cpu)
                wall, latencies, lost = await self._clients_run(self.ceiling_url, clients, numbers)
                ceiling.append((jobs / wall, percentile(latencies, 99) * 1000))
                ceiling_cpu.append(self.last_cpu)
            direct_wall, direct_lat = await asyncio.to_thread(rq_direct, self.stack.redis, numbers, clients)
            rate, top = _median(service), _median(ceiling)
            used = cpu[[r for r, _ in service].index(rate[0])]
            log.info("%d clients: jobs/s service %s, ceiling %s; CPU ms per job %s", clients,
                     [round(r) for r, _ in service], [round(r) for r, _ in ceiling], used)
            name = f"{clients} clients x {each} distinct small n, nothing cached"
            floor = f"{self.rq_floor}, {clients} in flight"
            target = ">= 0.33x ceiling" if clients == 100 else ""
            rows.append(Row(name, "jobs/s", rate[0], "jobs/s", top[0], jobs / direct_wall, floor, target,
                            rate[0] >= 0.33 * top[0] if target else None,
                            f"lost 0; median of {ROUNDS}; CPU ms/job " + _cpu_text(used, ("ceiling",))
                            + "; the ceiling's run: " + _cpu_text(ceiling_cpu[[r for r, _ in ceiling].index(top[0])],
                                                                  ("redis", "servers", "workers"))))
            rows.append(Row(name, "p99", rate[1], "ms", top[1], percentile(direct_lat, 99) * 1000, floor))
        return rows

    async def _clients_run(self, url: str, clients: int, numbers: list[int]) -> tuple[float, list[float], int]:
        """``clients`` connections share ``numbers``, each asking one at a time; connecting is not timed."""
        connections = await asyncio.gather(*(Client.connect(url) for _ in range(clients)))
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

    async def event_loop(self) -> list[Row]:
        """100 clients on a server with Python's standard loop, alternating with the default (uvloop) server."""
        variant = self.stack.variants.get(STANDARD_LOOP)
        if variant is None:
            return []
        return [await self._alternating(f"server on {STANDARD_LOOP}", variant, "default server (uvloop)")]

    async def web_processes(self) -> list[Row]:
        """100 clients on a server of WEB_PROCESSES=2 (one port, SO_REUSEPORT), alternating with a one-process one.

        On this machine's cores the workers, Redis and the client run too: the
        row shows what a second server process buys where they all share them.
        """
        if self.stack.redis_process is None:
            return []  # a running stack: its servers are what they are
        variant = self.stack.variants.get(TWO_PROCESSES)
        if variant is None:
            variant = await asyncio.to_thread(self.stack.start_server, {"WEB_PROCESSES": "2"}, TWO_PROCESSES)
        return [await self._alternating(f"server of {TWO_PROCESSES}", variant, "one-process server")]

    async def _alternating(self, name: str, variant, baseline: str) -> Row:
        """The 100-client load on ``variant`` and on the default server, in alternating rounds."""
        clients, each = (100, 4) if self.quick else (100, 10)
        numbers = random.sample(list(SMALL), clients * each)
        rates: dict[str, list[tuple[float, float]]] = {"default": [], "variant": []}
        servers = {"default": self.stack.servers[0], "variant": variant}
        for _ in range(ROUNDS):
            for key, server in servers.items():
                await asyncio.to_thread(forget_numbers, self.stack)
                before = process_cpu_seconds(server.process.pid) if server.process else 0.0
                wall, latencies, lost = await self._clients_run(server.url, clients, numbers)
                if lost:
                    raise Wrong(f"{lost} of {len(numbers)} requests got no exact answer")
                used = process_cpu_seconds(server.process.pid) - before if server.process else 0.0
                rates[key].append((len(numbers) / wall, used / len(numbers) * 1000))
        measured, default = _median(rates["variant"]), _median(rates["default"])
        return Row(f"{clients} clients x {each}, {name}", "jobs/s", measured[0], "jobs/s",
                   None, default[0], f"{baseline}, same rounds",
                   note=f"median of {ROUNDS}, alternating; jobs/s {[round(r) for r, _ in rates['variant']]} "
                   f"vs {[round(r) for r, _ in rates['default']]}; server CPU ms/job "
                   f"{measured[1]:.3f} vs {default[1]:.3f}")

    # --- 3. big results -----------------------------------------------------

    async def big(self) -> list[Row]:
        rows = []
        numbers = (100_000,) if self.quick else (100_000, 1_000_000)
        client = await Client.connect(self.url)
        try:
            for n in numbers:
                forget_numbers(self.stack)
                started = time.perf_counter()
                ack, raw = await client.factorial_raw(n)
                elapsed = time.perf_counter() - started
                self.expected.check(n, raw, ack["task_id"])
                floor = await asyncio.to_thread(gmpy2_time, n)
                target = "<= 2x floor" if n == 1_000_000 else ""
                rows.append(Row(f"{n}! end to end", "time", elapsed * 1000, "ms", None, floor * 1000,
                                "gmpy2 fac + digits, in-process", target,
                                elapsed <= 2 * floor if target else None, f"{len(raw)} bytes"))
        finally:
            client.close()
        return rows

    # --- 4. hot key ---------------------------------------------------------

    async def hot_key(self) -> list[Row]:
        n, clients = HOT_NUMBER, (100 if self.quick else 1000)
        forget_numbers(self.stack)
        single = await Client.connect(self.url)
        started = time.perf_counter()
        ack, raw = await single.factorial_raw(n)
        alone = time.perf_counter() - started
        single.close()
        self.expected.check(n, raw, ack["task_id"])

        # Rounds alternate with the ceiling, each with nothing cached; the median
        # of each is compared (a single pair moved from 0.8x to 1.6x between runs).
        services, ceilings = [], []
        for _ in range(ROUNDS):
            forget_numbers(self.stack)
            services.append(await self._all_at_once(self.url, n, clients))
            ceilings.append((await self._all_at_once(self.ceiling_url, n, clients))[0])
        service = sorted(services, key=lambda run: run[0])[len(services) // 2]
        ceiling = sorted(ceilings)[len(ceilings) // 2]
        wall, task_ids, exact, cpu, size = service
        all_exact = all(len(run[1]) == 1 and run[2] == clients for run in services)
        met = all_exact and wall <= 1.2 * ceiling
        return [Row(f"hot key, {clients} clients ask {n}! at once", "wall, all answered", wall * 1000, "ms",
                    ceiling * 1000, None, "", "1 job, all exact, <= 1.2x ceiling", met,
                    f"jobs {max(len(run[1]) for run in services)}, exact {min(run[2] for run in services)}/{clients}"
                    f" (worst round); median of {ROUNDS}, alternating; ms service "
                    f"{[round(run[0] * 1000) for run in services]}, ceiling {[round(c * 1000) for c in ceilings]}; "
                    f"one client alone {alone * 1000:.0f} ms; "
                    f"{clients * size / wall / 1e6:.0f} MB/s delivered; CPU s (median round) "
                    + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))]

    async def _all_at_once(self, url: str, n: int, clients: int):
        connections = await asyncio.gather(*(Client.connect(url) for _ in range(clients)))
        cpu_before = self._cpu()
        started = time.perf_counter()
        answers = await asyncio.gather(*(c.factorial_raw(n) for c in connections), return_exceptions=True)
        wall = time.perf_counter() - started
        cpu = {k: round(v - cpu_before.get(k, 0.0), 2) for k, v in self._cpu().items()}
        for c in connections:
            c.close()
        good = [a for a in answers if not isinstance(a, BaseException)]
        task_ids = {ack["task_id"] for ack, _ in good}
        # No ref: every exact answer is the same bytes, so one check covers all.
        first = good[0][1] if good else b""
        if good:
            self.expected.check(n, first, good[0][0]["task_id"])
        exact = sum(1 for _, raw in good if raw == first)
        return wall, task_ids, exact, cpu, len(first)

    # --- 5. held connections ------------------------------------------------

    async def held(self) -> list[Row]:
        count = 1000 if self.quick else 10_000
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        server = self.stack.servers[0]
        before = server.probe().get("rss_bytes", 0)
        forget_numbers(self.stack)
        started = time.perf_counter()
        opened = await asyncio.gather(*(Client.connect(self.url, timeout=HELD_CONNECT_S) for _ in range(count)),
                                      return_exceptions=True)
        connect_s = time.perf_counter() - started
        connections = [c for c in opened if isinstance(c, Client)]
        failures = count - len(connections)
        refused = collections.Counter(repr(c)[:120] for c in opened if not isinstance(c, Client))
        opening = server.probe(reset=True)
        after = opening.get("rss_bytes", 0)
        numbers = [SMALL[i % len(SMALL)] for i in range(len(connections))]

        why: collections.Counter[str] = collections.Counter()

        async def ask(client: Client, n: int) -> bool:
            try:
                ack, raw = await client.factorial_raw(n)
                self.expected.check(n, raw, ack["task_id"])
                return True
            except (Wrong, ConnectionError, asyncio.TimeoutError) as exc:
                why[repr(exc)[:120]] += 1
                return False

        started = time.perf_counter()
        results = await asyncio.gather(*(ask(c, n) for c, n in zip(connections, numbers)))
        answer_s = time.perf_counter() - started
        answering = server.probe()
        for c in connections:
            c.close()
        exact = sum(results)
        per_connection = (after - before) / max(len(connections), 1) / 1024 if before and after else 0.0
        name = f"{count} connections opened at once"
        # The probe was reset between the phases: the scenario's figure is the worse of the two.
        phases = [r for r in (opening, answering) if r]
        lag = max((r["max_lag_ms"] for r in phases), default=None)
        busy = max((r["max_busy_ms"] for r in phases), default=None)
        rows = [
            Row(name, "answered exactly", exact, "connections", None, count, "opened", "all answered",
                exact == count, f"connect failures {failures}"
                + (f" {dict(refused.most_common(3))}" if refused else "") + f"; connect {connect_s:.1f} s, answers {answer_s:.1f} s; "
                + (f"not answered: {dict(why.most_common(3))}; " if why else "")
                + f"loop lag (busy) while connecting {_lag(opening)}, while answering {_lag(answering)}"),
            Row(name, "server memory per connection", per_connection, "KiB",
                note=f"RSS {before >> 20} -> {after >> 20} MiB"),
        ]
        for row in rows:
            row.loop_lag_ms, row.loop_busy_ms = lag, busy
        return rows

    # --- 6. compression -----------------------------------------------------

    async def compression(self) -> list[Row]:
        if len(self.stack.servers) < 2:
            return []
        n = HOT_NUMBER
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
        return [Row(f"{n}! with permessage-deflate, loopback", "end to end", timings["on"] * 1000, "ms",
                    None, timings["off"] * 1000, "uncompressed",
                    note=f"server loop lag {timings['on_lag']:.0f} ms compressed, {timings['off_lag']:.0f} ms not")]

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


def _cpu_text(cpu: dict[str, float], leave_out: tuple[str, ...]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if k not in leave_out)


def _median(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """The run with the median rate (and that run's p99)."""
    rates = sorted(r for r, _ in runs)
    middle = rates[len(rates) // 2] if len(rates) % 2 else rates[len(rates) // 2 - 1]
    return next(run for run in runs if run[0] == middle)
