"""Where the time of a job goes: the 100-client load under a sampling profiler.

    python -m bench.profile                # 100 clients, 15 s of load, a stack of its own
    python -m bench.profile --seconds 30 --clients 100

Starts the benchmark's stack (Redis, two workers: one on soft, one on hard; one server), runs ``py-spy
record`` on the server and on each worker while ``--clients`` connections ask
for distinct small ``n`` one at a time, nothing cached, and prints for each
process and thread the wall time per job of each stage (reading frames,
parsing, the submit round trip, RQ's bookkeeping, the fan-out of results...)
and how much of it was spent waiting. py-spy samples every thread, idle or
not (``--idle``), so a stage's figure is wall time. The raw stacks are saved
under ``var/bench/profile/``.
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
               "--format", "raw", "--threads", "--idle", "--nonblocking", "-o", str(raw)]
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


# Where a sample's time goes: the first rule with a pattern found on its stack
# (root to leaf) names it. Ordered from the specific to the general.
SERVER_STAGES = (
    ("loop lag probe (benchmark only)", ("LagMonitor",)),
    ("results: fan-out and send", ("ResultDelivery._finish", "ResultDelivery._push_started")),
    ("results: events and payloads in (loop side)", ("ResultDelivery",)),
    ("acknowledgements: encode and send", ("FactorialSocket._send_ready_answers",)),
    ("requests: JSON parse and validate (protocol.py)", ("parse_request",)),
    ("requests: admit and queue (limits, futures)", ("FactorialSocket.on_message",)),
    ("requests: read and unframe (Tornado)", ("_receive_frame", "read_from_fd", "_read_to_buffer")),
    ("hops to and from the Redis threads", ("JobGateway._flush", "run_in_executor", "_write_to_self",
                                            "_read_from_self", "call_soon_threadsafe")),
    ("connections: accept and handshake", ("WebSocketHandler.get", "accept_connection", "HTTP1ServerConnection")),
    ("socket writes (Tornado)", ("write_to_fd", "_handle_write")),
    ("submit: Lua script round trip (Redis thread)", ("JobStore._claim", "JobStore.submit")),
    ("events: blocking XREAD (Redis thread)", ("JobStore.sync_waits_and_read_events", "JobStore.read_events")),
    ("events: payload MGET (Redis thread)", ("JobStore.payloads",)),
    ("lookups and sweep (Redis thread)", ("JobStore.states",)),
)
WORKER_STAGES = (
    ("waiting for a job (BLPOP)", ("dequeue_job_and_maintain_ttl",)),
    ("job: n! and its digits (gmpy2)", ("factorial_digits",)),
    ("job: success messages (protocol.py)", ("protocol.py",)),
    ("job: members read, payloads and event stored", ("factorial_batch", "factorial (jobs/factorial.py")),
    ("RQ: heartbeats", ("heartbeat",)),
    ("RQ: marking the job started", ("prepare_job_execution", "prepare_execution")),
    ("RQ: finishing bookkeeping", ("handle_job_success", "_finalize_success", "execute_success_callback")),
    ("RQ: worker state, suspension, maintenance", ("set_state", "check_for_suspension", "maintenance")),
)
# A sample whose innermost frame is one of these is waiting, not computing.
WAITING_LEAVES = ("read_from_socket", "select", "_worker", "Condition.wait", "run_forever", "_run_once")


def summarize(raw: Path, jobs: int, stages) -> str:
    """Per thread kind, the wall time per job of each stage, and how much of it waits (on Redis or I/O)."""
    by_thread: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    waiting: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue  # a frame name broken over lines by py-spy
        frames = stack_text.split(";")
        thread = frames[0].rsplit(":", 1)[-1].strip().rstrip("0123456789_") or "thread"
        if stages is WORKER_STAGES and thread != "MainThread":
            continue  # RQ's own listener thread: idle by design
        stage = next((label for label, patterns in stages
                      if any(p in frame for frame in frames[1:] for p in patterns)), "other (loop internals, idle)")
        by_thread[thread][stage] += int(count_text)
        if any(leaf in frames[-1] for leaf in WAITING_LEAVES):
            waiting[thread][stage] += int(count_text)
    lines = [f"{raw.stem}: wall time per job, by thread and stage ({jobs} jobs, {SAMPLE_RATE} samples/s)"]
    for thread, counter in sorted(by_thread.items(), key=lambda item: -sum(item[1].values())):
        total = sum(counter.values())
        lines.append(f"  {thread}: {total / SAMPLE_RATE / jobs * 1e6:.0f} us/job sampled")
        for stage, count in counter.most_common():
            per_job = count / SAMPLE_RATE / jobs * 1e6
            waited = waiting[thread][stage] / max(count, 1)
            lines.append(f"    {per_job:7.1f} us  {100 * count / total:5.1f}%  {stage}"
                         + (f"  (waiting {100 * waited:.0f}%)" if waited else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=2)
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
            print(summarize(raw, jobs, SERVER_STAGES if name == "server" else WORKER_STAGES))
    print(f"raw stacks in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
