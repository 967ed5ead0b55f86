"""An optional probe of the server's IOLoop: its longest stall, and the process's memory.

    LOOP_LAG_PORT=9100 python server.py
    curl 'http://127.0.0.1:9100/?reset=1'   # {"max_lag_ms": 3.1, "max_busy_ms": 2.9, "rss_bytes": 52367360, ...}

A coroutine sleeps ``TICK_S`` again and again; whatever it oversleeps is time
the loop spent on something else without yielding (``max_lag_ms``), or time
the OS gave to other processes; ``max_busy_ms`` counts only the loop thread's
own CPU time within such a stall. The probe answers on its
own port of 127.0.0.1, so the benchmark can read it between scenarios without
touching the service's routes. Unset, nothing runs.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import time

import tornado.web

log = logging.getLogger(__name__)

TICK_S = 0.01


class LagMonitor:
    def __init__(self) -> None:
        self.max_lag_s = 0.0
        self.max_busy_s = 0.0
        self.ticks = 0
        self.full_gcs = 0
        self.max_gc_s = 0.0
        self.max_gc_generation = 0
        self._gc_started = 0.0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        # Garbage collection stops the loop too: time every collection, count the full ones.
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        pause = time.perf_counter() - self._gc_started
        if pause > self.max_gc_s:
            self.max_gc_s, self.max_gc_generation = pause, info["generation"]
        if info["generation"] == 2:
            self.full_gcs += 1

    async def _run(self) -> None:
        while True:
            before, cpu_before = time.perf_counter(), time.thread_time()
            await asyncio.sleep(TICK_S)
            lag = time.perf_counter() - before - TICK_S
            # CPU the loop's own thread used meanwhile: a lag with little of it
            # was the OS running other processes, not this loop being blocked.
            busy = min(lag, time.thread_time() - cpu_before)
            self.ticks += 1
            self.max_lag_s = max(self.max_lag_s, lag)
            self.max_busy_s = max(self.max_busy_s, busy)

    def reading(self, reset: bool = False) -> dict:
        answer = {"max_lag_ms": round(self.max_lag_s * 1000, 2), "max_busy_ms": round(self.max_busy_s * 1000, 2),
                  "full_gcs": self.full_gcs, "max_gc_ms": round(self.max_gc_s * 1000, 2),
                  "max_gc_generation": self.max_gc_generation,
                  "ticks": self.ticks, "rss_bytes": rss_bytes()}
        if reset:
            self.max_lag_s = self.max_busy_s = self.max_gc_s = 0.0
            self.ticks = self.full_gcs = 0
        return answer


def rss_bytes() -> int:
    """Resident memory of this process, from /proc (Linux); 0 elsewhere."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _ReadingHandler(tornado.web.RequestHandler):
    def initialize(self, monitor: LagMonitor) -> None:
        self.monitor = monitor

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(self.monitor.reading(reset=self.get_argument("reset", "") == "1")))


def start(port: int) -> LagMonitor | None:
    """Start the probe on 127.0.0.1:port (0: not at all); call on the running loop."""
    if not port:
        return None
    monitor = LagMonitor()
    monitor.start()
    tornado.web.Application([(r"/", _ReadingHandler, {"monitor": monitor})]).listen(port, "127.0.0.1")
    log.info("Loop lag probe on http://127.0.0.1:%s/", port)
    return monitor
