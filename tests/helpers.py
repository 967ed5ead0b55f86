"""Small tools the tests share: waiting with a deadline, free ports, WebSocket clients."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import time
from pathlib import Path

from tornado.websocket import websocket_connect

from stack.procs import free_port, stop_process, wait_until  # noqa: F401 - the tests' helpers too

# Big enough for 1,000,000! (5.6 MB) in one message.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


async def async_wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Return the predicate's first truthy value (a coroutine function's too: its result is awaited);
    raise AssertionError if none comes within ``timeout`` s. The IOLoop runs meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


class Client:
    """A WebSocket client speaking the protocol, for tests."""

    def __init__(self, connection):
        self.connection = connection

    @classmethod
    async def connect(cls, url: str, **kwargs) -> "Client":
        return cls(await websocket_connect(url, max_message_size=MAX_MESSAGE_BYTES, **kwargs))

    async def send(self, message) -> None:
        await self.connection.write_message(message if isinstance(message, (str, bytes)) else json.dumps(message),
                                            binary=isinstance(message, bytes))

    async def receive(self, timeout: float = 10.0) -> dict:
        raw = await asyncio.wait_for(self.connection.read_message(), timeout)
        if raw is None:
            raise ConnectionError(f"connection closed ({self.connection.close_code})")
        return json.loads(raw)

    async def ask(self, message, timeout: float = 10.0) -> dict:
        await self.send(message)
        return await self.receive(timeout)

    async def factorial(self, number: int, timeout: float = 30.0) -> tuple[dict, dict]:
        """Ask for number! and return (acknowledgement, success)."""
        ack = await self.ask({"type": "factorial", "number": number}, timeout)
        assert ack["type"] == "result", ack
        done = await self.receive(timeout)
        # A "started" push may come first: the sweep can see even a soft job running.
        while done["type"] == "status":
            done = await self.receive(timeout)
        return ack, done

    def close(self) -> None:
        self.connection.close()


def child_pids(pid: int) -> list[int]:
    """The live child processes of ``pid`` (a worker's work horse)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which is in parentheses: state, ppid, ...
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.append(int(entry.name))
    return found


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def jobs_waiting(redis_client, queue: str) -> int:
    """Jobs waiting for ``queue``: in the RQ queue and in the clients' pending lists (fair scheduling)."""
    from jobs import keys

    return redis_client.llen(f"rq:queue:{queue}") + int(redis_client.get(keys.pending_count(queue)) or 0)


_APPEND_EVENT = """
local payloads = {}
for i, task_id in ipairs(cjson.decode(ARGV[5])) do payloads[task_id] = ARGV[5 + i] end
lc_event(cjson.decode(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], payloads)
"""


def append_event(redis, task_ids: list[str], state: str, payloads: dict | None = None,
                 code: str = "", text: str = "") -> None:
    """Append a job event with the service's own Lua writer (jobs/lua/lifecycle.lua lc_event),
    without a job behind it: what a delivery test needs to see events arrive."""
    import json

    from jobs.lifecycle import lua_preamble
    from jobs.scripts import LUA_DIR

    script = redis.register_script(lua_preamble() + (LUA_DIR / "lifecycle.lua").read_text() + _APPEND_EVENT)
    payloads = payloads or {}
    script(args=[json.dumps(task_ids), state, code, text, json.dumps(list(payloads)), *payloads.values()])
