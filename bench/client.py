"""The benchmark's WebSocket clients and the RQ-direct floor."""

from __future__ import annotations

import asyncio
import json
import time

import gmpy2
from rq import Queue
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClosedError, websocket_connect

from jobs.factorial import factorial_digits
from jobs.rq_schema import SERIALIZER

# Big enough for 1,000,000! (5.6 MB) in one message.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
RECEIVE_TIMEOUT_S = 120.0


class Wrong(AssertionError):
    """An answer that is not the exact n!."""


class Client:
    def __init__(self, connection):
        self.connection = connection

    @classmethod
    async def connect(cls, url: str, compression: bool = False, timeout: float = 60.0) -> "Client":
        # The handshake has the whole deadline too (Tornado's request_timeout is 20 s by
        # default): 10,000 connections opened at once on a busy machine can take longer.
        request = HTTPRequest(url, connect_timeout=timeout, request_timeout=timeout)
        connection = await websocket_connect(request, max_message_size=MAX_MESSAGE_BYTES,
                                             compression_options={} if compression else None)
        return cls(connection)

    async def send(self, message: dict) -> None:
        try:
            await self.connection.write_message(json.dumps(message))
        except WebSocketClosedError:
            raise ConnectionError(f"connection closed ({self.connection.close_code} "
                                  f"{self.connection.close_reason or ''})".rstrip() + ")") from None

    async def receive_raw(self) -> str | bytes:
        raw = await asyncio.wait_for(self.connection.read_message(), RECEIVE_TIMEOUT_S)
        if raw is None:
            raise ConnectionError(f"connection closed ({self.connection.close_code})")
        return raw

    async def factorial_raw(self, number: int) -> tuple[dict, str | bytes]:
        """Ask for number!; return the acknowledgement and the raw final answer."""
        await self.send({"type": "factorial", "number": number})
        ack = json.loads(await self.receive_raw())
        self.acked_at = time.perf_counter()
        if ack.get("type") != "result":
            raise Wrong(f"{number}!: expected an acknowledgement, got {ack}")
        while True:
            raw = await self.receive_raw()
            # Hard jobs announce their start; small answers are never that short.
            if len(raw) > 200 or json.loads(raw).get("type") != "status":
                return ack, raw

    async def lookup_raw(self, task_id: str) -> str | bytes:
        """Ask for a task's result; return the raw final answer (after any status message)."""
        await self.send({"type": "result", "task_id": task_id})
        while True:
            raw = await self.receive_raw()
            if json.loads(raw).get("type") != "status":
                return raw

    def close(self) -> None:
        self.connection.close()


class Expected:
    """Exact answers, computed here once per number."""

    def __init__(self) -> None:
        self._digits: dict[int, str] = {}

    def digits(self, number: int) -> str:
        if number not in self._digits:
            self._digits[number] = factorial_digits(number)
        return self._digits[number]

    def check(self, number: int, raw: str | bytes, task_id: str | None = None) -> None:
        message = json.loads(raw)
        if message.get("type") != "success":
            raise Wrong(f"{number}!: expected success, got {str(message)[:200]}")
        if task_id is not None and message.get("task_id") != task_id:
            raise Wrong(f"{number}!: answer for task {message.get('task_id')}, asked {task_id}")
        result = message["result"]
        digits = result if isinstance(result, str) else str(result)
        if digits != self.digits(number) or message.get("digits") != len(digits):
            raise Wrong(f"{number}!: wrong digits")


def gmpy2_time(number: int, repeat: int = 3) -> float:
    """Best in-process time of fac + decimal digits, seconds."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        gmpy2.fac(number).digits()
        best = min(best, time.perf_counter() - started)
    return best


def rq_direct(redis, numbers: list[int], concurrency: int, poll_s: float = 0.0005) -> tuple[float, list[float]]:
    """Run ``numbers`` as plain RQ jobs, ``concurrency`` in flight at a time, polling tightly.

    Returns (wall seconds, per-job latencies). The client is one thread
    with pipelined enqueues and status polls, the cheapest client RQ allows.
    """
    queue = Queue("soft", connection=redis, serializer=SERIALIZER)
    pending = list(numbers)
    in_flight: dict[str, float] = {}
    latencies: list[float] = []
    started = time.perf_counter()
    while pending or in_flight:
        room = concurrency - len(in_flight)
        if room > 0 and pending:
            batch, pending = pending[:room], pending[room:]
            datas = [Queue.prepare_data("jobs.factorial.factorial", args=(n,), result_ttl=600) for n in batch]
            with redis.pipeline() as pipe:
                jobs = queue.enqueue_many(datas, pipeline=pipe)
                pipe.execute()
            now = time.perf_counter()
            for job in jobs:
                in_flight[job.id] = now
        ids = list(in_flight)
        with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(f"rq:job:{job_id}", "status")
            statuses = pipe.execute()
        now = time.perf_counter()
        for job_id, status in zip(ids, statuses):
            if status == b"finished":
                latencies.append(now - in_flight.pop(job_id))
            elif status in (b"failed", b"stopped", b"canceled"):
                raise Wrong(f"RQ job {job_id} {status.decode()}")
        if in_flight and poll_s:
            time.sleep(poll_s)
    return time.perf_counter() - started, latencies
