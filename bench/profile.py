"""Where the time of a job goes: the 100-client load under a sampling profiler.

    python -m bench.profile                # 100 clients, 15 s of load, a stack of its own
    python -m bench.profile --seconds 30 --clients 100 --top 40

Starts the benchmark's stack (Redis, two workers, one server), runs ``py-spy
record`` on the server and on each worker while ``--clients`` connections ask
for distinct small ``n`` one at a time, nothing cached, and prints for each
process the functions that hold the most samples (inclusive and own time).
The flame graphs and the raw stacks are saved under ``var/bench/profile/``.
py-spy needs ptrace rights (root, or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import stack as stacks
from bench.client import Client, Expected
from bench.scenarios import SMALL, forget_numbers

log = logging.getLogger("bench.profile")
OUT = Path(__file__).resolve().parent.parent / "var" / "bench" / "profile"
SAMPLE_RATE = 250  # samples per second: enough for a 15 s run, light enough not to be what is measured


def record(pid: int, name: str, seconds: float) -> tuple[subprocess.Popen, Path]:
    """Start ``py-spy record`` on ``pid`` for ``seconds``; it writes raw (collapsed) stacks."""
    raw = OUT / f"{name}.txt"
    command = ["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(SAMPLE_RATE),
               "--format", "raw", "--threads", "--gil", "--nonblocking", "-o", str(raw)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), raw


async def load(url: str, clients: int, seconds: float, stack: stacks.Stack) -> tuple[int, float]:
    """``clients`` connections ask distinct small n, one at a time each, for ``seconds``; returns (jobs, wall)."""
    expected = Expected()
    connections = await asyncio.gather(*(Client.connect(url) for _ in range(clients)))
    done = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        # A round: every number is new to the service again, as in the benchmark.
        forget_numbers(stack)
        numbers = random.sample(list(SMALL), len(SMALL))

        async def run(client: Client, share: list[int]) -> int:
            count = 0
            for n in share:
                ack, raw = await client.factorial_raw(n)
                expected.check(n, raw, ack["task_id"])
                count += 1
            return count

        done += sum(await asyncio.gather(*(run(c, numbers[i::clients]) for i, c in enumerate(connections))))
    wall = time.perf_counter() - started
    for c in connections:
        c.close()
    return done, wall


def summarize(raw: Path, top: int) -> str:
    """The functions with the most samples in ``raw``: inclusive (anywhere on the stack) and own (on top)."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text:
            continue
        count = int(count_text)
        frames = stack_text.split(";")
        total += count
        for frame in set(frames[1:]):  # [0] names the thread
            inclusive[frame] += count
        own[frames[-1]] += count
    if not total:
        return f"{raw.name}: no samples"
    lines = [f"{raw.stem}: {total} samples ({total / SAMPLE_RATE:.1f} CPU s at {SAMPLE_RATE}/s)"]
    for title, counter in (("inclusive", inclusive), ("own", own)):
        lines.append(f"  {title}:")
        for frame, count in counter.most_common(top):
            lines.append(f"    {100 * count / total:5.1f}%  {frame}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--top", type=int, default=30, help="functions to list per process")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if not shutil.which("py-spy"):
        parser.error("py-spy is not installed (pip install -r requirements-dev.txt)")
    OUT.mkdir(parents=True, exist_ok=True)
    stack = stacks.start(args.workers, "jobs.worker.LaneWorker", servers=1)
    try:
        targets = {"server": stack.servers[0].process.pid}
        targets.update({f"worker-{i + 1}": w.pid for i, w in enumerate(stack.workers)})
        # Warm up (imports, first connections) before sampling starts.
        asyncio.run(load(stack.servers[0].url, args.clients, 1.0, stack))
        recorders = {name: record(pid, name, args.seconds) for name, pid in targets.items()}
        jobs, wall = asyncio.run(load(stack.servers[0].url, args.clients, args.seconds, stack))
        cpu = stack.cpu_seconds()
        for name, (process, _) in recorders.items():
            _, errors = process.communicate(timeout=args.seconds + 60)
            if process.returncode:
                log.warning("py-spy on %s: %s", name, errors.strip()[-500:])
    finally:
        stack.close()
    print(f"{args.clients} clients, {jobs} jobs in {wall:.1f} s: {jobs / wall:.0f} jobs/s; "
          f"CPU s since start: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    for name, (_, raw) in recorders.items():
        if raw.exists():
            print(summarize(raw, args.top))
    print(f"raw stacks in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
