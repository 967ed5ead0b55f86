"""Benchmark the service against the no-queue ceiling and its floors, all measured in the same run.

    python -m bench                      # everything, on a stack of its own
    python -m bench --quick              # smaller counts, well under a minute
    python -m bench -s latency -s big    # some scenarios only
    python -m bench --url ws://host:8888/ws --redis-url redis://host:6379/0 [--probe-url http://...]
    python -m bench -s abuse [--minutes 10]   # the abuse soak (bench/abuse.py), alone, never by default

A stack of its own is a private redis-server on a free port, ``--workers`` rq
workers (``jobs.worker.LaneWorker``; as the Procfile runs them, one on
``soft`` and one on ``hard`` by default), two servers (the second offers
permessage-deflate, for the compression scenario and for scale out) and the
no-queue ceiling (``bench.ceiling``). Every figure is printed beside the
ceiling's and the floor's, as ratios. The table is saved as JSON under
``var/bench/`` (outside the tracked tree).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import stack as stacks
from bench.scenarios import Row, Scenarios

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent
# Untracked (var/ is ignored): a run never changes the checkout.
RESULTS = ROOT / "var" / "bench" / "latest.json"
ALL = ("latency", "throughput", "event_loop", "web_processes", "big", "hot_key", "held", "compression", "scale_out")
LOOP_LAG_TARGET_MS = 50.0
# Run only when asked for, and alone: a soak of minutes on a stack of its own (bench/abuse.py).
SOAKS = ("abuse",)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("-s", "--scenario", action="append", choices=ALL + SOAKS,
                        help="run only this scenario (repeatable); default: all but the abuse soak")
    parser.add_argument("--minutes", type=float, default=10.0, help="abuse soak: how long (default 10)")
    parser.add_argument("--every", type=float, default=5.0, help="abuse soak: seconds between samples (default 5)")
    parser.add_argument("--redis-maxmemory", default="256mb",
                        help="abuse soak: its Redis's REDIS_MAXMEMORY (default 256mb)")
    parser.add_argument("--alone", action="store_true",
                        help="abuse soak: the normal client alone, a baseline on the same machine")
    parser.add_argument("--quick", action="store_true",
                        help="smaller counts; skips 1000000!, 1000 clients and 10,000 connections")
    parser.add_argument("--workers", type=int, default=2, help="rq workers to start, alternately on soft and on hard (default 2; 1 serves both)")
    parser.add_argument("--worker-class", default="jobs.worker.LaneWorker")
    parser.add_argument("--url", action="append", help="a running server's ws:// URL (give two for scale out)")
    parser.add_argument("--redis-url", help="the running stack's Redis (needed with --url)")
    parser.add_argument("--probe-url", action="append", default=[],
                        help="a running server's loop lag probe (LOOP_LAG_PORT), in --url order")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where to save the table (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.url and not args.redis_url:
        parser.error("--url needs --redis-url")
    if args.scenario and set(args.scenario) & set(SOAKS) and (len(args.scenario) > 1 or args.url):
        parser.error("-s abuse runs alone, on a stack of its own")
    return args


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model or platform.processor(), "python": platform.python_version(),
            "platform": platform.platform()}


def commit() -> str:
    """The checkout's commit, marked ``-dirty`` when files differ from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


async def run(args: argparse.Namespace, stack: stacks.Stack) -> list[Row]:
    workers = len(stack.redis.smembers("rq:workers")) if args.url else args.workers
    scenarios = Scenarios(stack, args.quick, workers)
    rows: list[Row] = []
    for name in args.scenario or ALL:
        for server in stack.servers:
            server.probe(reset=True)
        started = time.perf_counter()
        found = await getattr(scenarios, name)()
        readings = [server.probe() for server in stack.servers]
        lag = max((r["max_lag_ms"] for r in readings if r), default=None)
        busy = max((r["max_busy_ms"] for r in readings if r), default=None)
        for row in found:
            # A scenario that read the probe itself (in phases) keeps the worse figure.
            row.loop_lag_ms = max((x for x in (row.loop_lag_ms, lag) if x is not None), default=None)
            row.loop_busy_ms = max((x for x in (row.loop_busy_ms, busy) if x is not None), default=None)
        log.info("%s: %.1f s, loop lag %s ms (busy %s ms)", name, time.perf_counter() - started, lag, busy)
        rows.extend(found)
    return rows


def table(rows: list[Row]) -> str:
    """Every figure beside the ceiling's and the floor's, with the ratios; notes below."""
    header = ("scenario", "measure", "service", "ceiling", "x ceiling", "floor", "x floor", "target", "met",
              "loop stall (busy)")
    lines = [header]
    notes = []
    for r in rows:
        lines.append((
            r.scenario, r.measure, _figure(r.value, r.unit), _figure(r.ceiling, r.unit),
            _times(r.to_ceiling), f"{_figure(r.floor, r.unit)} ({r.floor_name})" if r.floor is not None else "",
            _times(r.to_floor), r.target, {True: "yes", False: "NO", None: ""}[r.met],
            f"{r.loop_lag_ms:.0f} ms ({r.loop_busy_ms:.0f})" if r.loop_lag_ms is not None else "",
        ))
        if r.note:
            notes.append(f"- {r.scenario}, {r.measure}: {r.note}")
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = []
    for i, line in enumerate(lines):
        out.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths)) + " |")
        if i == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out + [""] + notes)


def _figure(value: float | None, unit: str) -> str:
    return "" if value is None else f"{value:.4g} {unit}"


def _times(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}x"


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    # Stopped with SIGTERM, still stop the processes it started (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.scenario == ["abuse"]:
        from bench import abuse

        json_path = args.json if args.json != RESULTS else abuse.RESULTS
        return abuse.main(args.minutes, args.every, args.redis_maxmemory, json_path, args.alone)
    if args.url:
        stack = stacks.attach(args.url, args.redis_url, args.probe_url)
    else:
        stack = stacks.start(args.workers, args.worker_class, servers=2,
                             second_server_env={"WEBSOCKET_COMPRESSION": "true"})
    # The client holds thousands of connections too: its collector must not be what is measured.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 100)
    try:
        rows = asyncio.run(run(args, stack))
    finally:
        if not args.url:
            stack.close()
    # Loop lag is a target of every scenario.
    lag_ok = all(r.loop_busy_ms is None or r.loop_busy_ms <= LOOP_LAG_TARGET_MS for r in rows)
    busiest = max((r.loop_busy_ms for r in rows if r.loop_busy_ms is not None), default=None)
    text = table(rows)
    if busiest is not None:
        text += (f"\nlongest IOLoop stall, loop CPU: {busiest:.0f} ms "
                 f"(target <= {LOOP_LAG_TARGET_MS:.0f} ms: {'met' if lag_ok else 'NOT met'})")
    if not args.url:
        text += ("\nthe benchmark's own servers run without per-client limits (CLIENT_MAX_CONNECTIONS, "
                 "CLIENT_MAX_IN_FLIGHT, CLIENT_MAX_REQUESTS_PER_S, CLIENT_MAX_OPENING_CONNECTIONS, "
                 "CLIENT_MAX_UNSENT_BYTES_TOTAL = 0): "
                 "all its load comes from one host")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    where = machine()
    text = f"{when}, commit {commit()}, {where['cores']} cores ({where['cpu']}), Python {where['python']}\n" + text
    print(text)
    report = {"command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
              "date": when, "commit": commit(),
              "machine": where, "quick": args.quick, "workers": args.workers,
              "worker_class": args.worker_class, "loop_lag_target_ms": LOOP_LAG_TARGET_MS,
              "loop_lag_met": lag_ok, "rows": [r.as_dict() for r in rows], "table": text}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    log.info("saved %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
