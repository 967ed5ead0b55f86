"""The processes a benchmark run needs: a private Redis, rq workers, servers and the ceiling, on free ports."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis

from jobs.routing import QUEUES
from jobs.rq_schema import SERIALIZER_PATH
from stack.procs import free_port, free_ports, stop_process, wait_until
from stack.redis import server_command

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 20.0
# The hot key's answer, made by the ceiling before it listens.
CEILING_PRECOMPUTE = (100_000,)
# The variant server on Python's own event loop, beside the default uvloop.
STANDARD_LOOP = "EVENT_LOOP=asyncio"
TWO_PROCESSES = "WEB_PROCESSES=2"
# The service's own fair use would count the benchmark (one client address,
# thousands of connections asking back to back) as an abuser: lifted here,
# per connection and per client (0: no limit), and said so in the output.
UNLIMITED = {"MAX_REQUESTS_PER_S": "1000000",
             "CLIENT_MAX_CONNECTIONS": "0", "CLIENT_MAX_IN_FLIGHT": "0", "CLIENT_MAX_REQUESTS_PER_S": "0",
             "CLIENT_MAX_OPENING_CONNECTIONS": "0", "CLIENT_MAX_UNSENT_BYTES_TOTAL": "0"}


def wait_for(predicate, what: str, timeout: float = START_TIMEOUT_S):
    return wait_until(predicate, timeout=timeout, what=what)


def _answers(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


@dataclass
class Server:
    """One ``python server.py``, with its loop lag probe."""

    url: str
    probe_url: str = ""
    process: subprocess.Popen | None = None

    def probe(self, reset: bool = False) -> dict:
        """The probe's reading ({} when the server was not started with one)."""
        if not self.probe_url:
            return {}
        try:
            with urllib.request.urlopen(self.probe_url + ("?reset=1" if reset else ""), timeout=5) as reply:
                return json.loads(reply.read())
        except OSError:
            return {}


@dataclass
class Stack:
    redis_url: str
    servers: list[Server]
    ceiling: Server | None = None
    # Servers that differ from the first by one setting, for one scenario each (name -> server).
    variants: dict[str, Server] = field(default_factory=dict)
    redis_process: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)
    owned: list[subprocess.Popen] = field(default_factory=list)
    worker_class: str = "jobs.worker.LaneWorker"
    worker_args: tuple[str, ...] = ()
    tmp: str = ""

    @property
    def redis(self) -> Redis:
        return Redis.from_url(self.redis_url)

    def start_workers(self, count: int, worker_class: str, queues: tuple[str, ...] | None = None) -> None:
        """Replace the running workers by ``count`` workers of ``worker_class``.

        On ``queues`` if given; else as the Procfile runs them, one per queue,
        the first on ``soft``, the next on ``hard``, and so on (one worker
        alone serves both).
        """
        self.stop_workers()
        self.worker_class = worker_class
        client = self.redis
        for i in range(count):
            before = set(client.smembers("rq:workers"))
            served = queues or (QUEUES if count == 1 else (QUEUES[i % len(QUEUES)],))
            command = [sys.executable, "-m", "rq.cli", "worker", *served,
                       "--worker-class", worker_class, "--url", self.redis_url, "--serializer", SERIALIZER_PATH,
                       *self.worker_args]
            process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(lambda: set(client.smembers("rq:workers")) - before or process.poll() is not None,
                     "an rq worker to register")
            if process.poll() is not None:
                raise RuntimeError("rq worker exited at start")
            self.workers.append(process)

    def stop_workers(self) -> None:
        if not self.workers:
            return  # none of ours; a running stack's workers are left alone
        for process in self.workers:
            stop_process(process)
        self.workers.clear()
        # Dead workers' keys would make a later run's registration check ambiguous.
        client = self.redis
        for key in client.smembers("rq:workers"):
            client.srem("rq:workers", key)

    def start_server(self, extra_env: dict | None = None, variant: str = "") -> Server:
        """A server; a ``variant`` one is kept apart from ``servers``, under that name."""
        # Each of WEB_PROCESSES processes serves its probe on the next port.
        processes = int((extra_env or {}).get("WEB_PROCESSES", "1"))
        port, probe_port = free_port(), free_ports(processes)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SERVER_PORT": str(port), "SERVER_HOST": "127.0.0.1",
               "REDIS_URL": self.redis_url, "LOOP_LAG_PORT": str(probe_port), "LOG_LEVEL": "WARNING",
               # One process per server, as the benchmark starts them one by one.
               "WEB_PROCESSES": "1",
               **UNLIMITED, **(extra_env or {})}
        process = subprocess.Popen([sys.executable, "server.py"], cwd=ROOT, env=env)
        server = Server(f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{probe_port}/", process)
        wait_for(lambda: server.probe() or process.poll() is not None, "the server to listen")
        if process.poll() is not None:
            raise RuntimeError("server.py exited at start")
        if variant:
            self.variants[variant] = server
        else:
            self.servers.append(server)
        self.owned.append(process)
        log.info("server pid %d at %s", process.pid, server.url)
        return server

    def start_ceiling(self) -> Server:
        """The no-queue ceiling (``bench.ceiling``) on a free port."""
        port, probe_port = free_port(), free_port()
        command = [sys.executable, "-m", "bench.ceiling", "--port", str(port), "--probe-port", str(probe_port)]
        for number in CEILING_PRECOMPUTE:
            command += ["--precompute", str(number)]
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                   stderr=subprocess.DEVNULL)
        self.ceiling = Server(f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{probe_port}/", process)
        self.owned.append(process)
        wait_for(lambda: self.ceiling.probe() or process.poll() is not None, "the ceiling to listen")
        if process.poll() is not None:
            raise RuntimeError("bench.ceiling exited at start")
        log.info("ceiling pid %d at %s", process.pid, self.ceiling.url)
        return self.ceiling

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by each kind of process this stack started (Linux /proc)."""
        roles = {"redis": [self.redis_process] if self.redis_process else [],
                 "servers": [s.process for s in self.servers if s.process], "workers": self.workers,
                 "ceiling": [self.ceiling.process] if self.ceiling and self.ceiling.process else []}
        return {role: sum(process_cpu_seconds(p.pid) for p in processes) for role, processes in roles.items()
                if processes}

    def close(self) -> None:
        self.stop_workers()
        for process in reversed(self.owned):
            stop_process(process)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def own_redis(prefix: str = "bench-redis-", maxmemory: str | None = None) -> Stack:
    """A stack with only a Redis of its own so far, on a free port, its files in a temporary folder.

    ``maxmemory``: as REDIS_MAXMEMORY (default: the setting's default).
    """
    tmp = tempfile.mkdtemp(prefix=prefix)
    port = free_port()
    options = {"maxmemory": maxmemory} if maxmemory else {}
    redis_process = subprocess.Popen(server_command(port, Path(tmp), append_only=False, **options),
                                     stdout=subprocess.DEVNULL)
    stack = Stack(f"redis://127.0.0.1:{port}/0", [], owned=[redis_process], redis_process=redis_process, tmp=tmp)
    try:
        wait_for(lambda: _answers(Redis.from_url(stack.redis_url)), "redis-server")
    except BaseException:
        stack.close()
        raise
    return stack


def start(workers: int, worker_class: str, servers: int, second_server_env: dict | None = None) -> Stack:
    """A whole stack of our own: Redis, ``workers`` rq workers, ``servers`` servers."""
    stack = own_redis()
    try:
        stack.start_workers(workers, worker_class)
        for i in range(servers):
            stack.start_server(second_server_env if i == 1 else None)
        stack.start_server({"EVENT_LOOP": "asyncio"}, variant=STANDARD_LOOP)
        stack.start_ceiling()
    except BaseException:
        stack.close()
        raise
    return stack


def attach(urls: list[str], redis_url: str, probe_urls: list[str]) -> Stack:
    """A running stack, given by its servers' URLs and its Redis."""
    servers = [Server(url, probe) for url, probe in zip(urls, probe_urls + [""] * len(urls))]
    stack = Stack(redis_url, servers, worker_class="the stack's own worker class")
    # The ceiling is what this client and its network allow: it runs here.
    try:
        stack.start_ceiling()
    except BaseException:
        stack.close()
        raise
    return stack


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children, live or waited for.

    A WEB_PROCESSES server is a supervisor whose forked processes do the work.
    """
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    # Fields from 3 on, after the command name; see proc(5).
                    stats[int(entry)] = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
    if pid not in stats:
        return 0.0
    children: dict[int, list[int]] = {}
    for child, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(child)  # field 4: the parent's pid
    total, family = 0, [pid]
    while family:
        member = family.pop()
        # Fields 14-17: utime, stime, cutime, cstime.
        total += sum(int(x) for x in stats[member][11:15])
        family += children.get(member, [])
    return total / os.sysconf("SC_CLK_TCK")