"""A test client that keeps its promises across restarts: it reconnects and asks again.

It sends factorial requests at a steady pace, each number once, and records
every acknowledgement and every final answer by task id. When its connection
drops (a 1012 from a draining server, a killed server, a balancer moving it)
it reconnects, asks ``result`` for each acknowledged task still unanswered,
and sends again the requests that got no acknowledgement.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import defaultdict
from collections.abc import Iterator

import gmpy2
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClosedError, websocket_connect

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
RECONNECT_PAUSE_S = 0.2
# Requests answered "unavailable" or "busy" are sent again this much later.
RETRY_PAUSE_S = 0.5


class PatientClient:
    def __init__(self, url: str, reconnect_for_s: float = 60.0):
        self.url = url
        self.reconnect_for_s = reconnect_for_s
        self._refs = itertools.count()
        self.unacked: dict[str, int] = {}  # ref -> number
        self.acked: dict[str, int] = {}  # task id -> number
        self.pending: set[str] = set()  # acknowledged, no final answer yet
        self.finals: dict[str, list[dict]] = defaultdict(list)
        self.acked_at: dict[str, float] = {}
        # Per request (ref): when it was first asked, and how long its acknowledgement took from then.
        self.first_asked_at: dict[str, float] = {}
        self.ack_wait_s: dict[str, float] = {}
        self.answered_after_s: dict[str, float] = {}
        self.reconnects = 0
        self.close_codes: list[int | None] = []
        self.refused: list[dict] = []  # refusals no retry can help
        self._connection = None
        # The refs sent on the current connection: ask() may run while a reconnect
        # sends the unacknowledged requests again, and each must go once.
        self._sent_here: set[str] = set()
        self._reader: asyncio.Task | None = None
        self._stopping = False

    # --- use --------------------------------------------------------------------

    async def start(self) -> "PatientClient":
        await self._connect()
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def ask(self, number: int) -> None:
        ref = f"r{next(self._refs)}"
        self.unacked[ref] = number
        self.first_asked_at[ref] = time.monotonic()
        await self._send_request(ref)

    @property
    def settled(self) -> bool:
        return not self.pending and not self.unacked

    async def stop(self) -> None:
        self._stopping = True
        if self._connection is not None:
            self._connection.close()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the reader's end is ours
                pass

    def waits_for_acknowledgement(self, since: float, until: float) -> list[float]:
        """How long each request first asked between ``since`` and ``until`` waited for its acknowledgement
        (one still unanswered: how long it has waited so far)."""
        now = time.monotonic()
        return [self.ack_wait_s.get(ref, now - asked) for ref, asked in self.first_asked_at.items()
                if since <= asked <= until]

    def wrong_answers(self) -> list[str]:
        """Every acknowledged task without exactly one correct final answer, described."""
        problems = [f"request {m.get('ref')} refused: {m}" for m in self.refused]
        for task_id, number in self.acked.items():
            finals = self.finals.get(task_id, [])
            if len(finals) != 1:
                problems.append(f"{number}! ({task_id}): {len(finals)} final answers: "
                                + "; ".join(f"{f['type']} {f.get('code', '')} ref={f.get('ref')}" for f in finals))
            elif finals[0]["type"] != "success":
                problems.append(f"{number}! ({task_id}): {finals[0]}")
            elif finals[0]["digits"] != len(str(gmpy2.fac(number))):
                problems.append(f"{number}! ({task_id}): {finals[0]['digits']} digits")
        return problems

    # --- the connection ---------------------------------------------------------

    async def _connect(self) -> None:
        deadline = time.monotonic() + self.reconnect_for_s
        while True:
            try:
                request = HTTPRequest(self.url, connect_timeout=3, request_timeout=5)
                self._connection = await websocket_connect(request, max_message_size=MAX_MESSAGE_BYTES)
                self._sent_here = set()
                break
            except (OSError, HTTPClientError, asyncio.TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(RECONNECT_PAUSE_S)  # between tries of a loop bounded by its deadline
        for task_id in sorted(self.pending):
            await self._write({"type": "result", "task_id": task_id})
        for ref in list(self.unacked):
            await self._send_request(ref)

    async def _send_request(self, ref: str) -> None:
        """Send request ``ref`` on this connection unless it went already (or is answered)."""
        if ref in self._sent_here or ref not in self.unacked:
            return
        self._sent_here.add(ref)
        await self._write({"type": "factorial", "number": self.unacked[ref], "ref": ref})

    async def _write(self, message: dict) -> None:
        try:
            await self._connection.write_message(json.dumps(message))
        except WebSocketClosedError:
            pass  # the reader reconnects and sends it again

    async def _read(self) -> None:
        while not self._stopping:
            raw = await self._connection.read_message()
            if raw is None:
                self.close_codes.append(self._connection.close_code)
                if self._stopping:
                    return
                self.reconnects += 1
                await self._connect()
                continue
            self._take(json.loads(raw))

    def _take(self, message: dict) -> None:
        kind, task_id, ref = message.get("type"), message.get("task_id"), message.get("ref")
        if kind == "result" and ref in self.unacked:
            number = self.unacked.pop(ref)
            self.ack_wait_s[ref] = time.monotonic() - self.first_asked_at[ref]
            self.acked[task_id] = number
            self.acked_at.setdefault(task_id, time.monotonic())
            self.pending.add(task_id)
        elif kind == "error" and not task_id and ref in self.unacked:
            # Refusals a client is told to retry later (protocol: error codes).
            # rate_limited comes when the requests a stalled server held come
            # through together, more than the client's in-flight limit.
            if message.get("code") in ("unavailable", "busy", "rate_limited"):
                asyncio.get_running_loop().call_later(RETRY_PAUSE_S, self._resend, ref, self.reconnects)
            else:
                # Kept, and reported by wrong_answers(): raising here would end
                # the reader and leave every later answer unread.
                self.refused.append(message)
                self.unacked.pop(ref)
        elif kind in ("success", "error") and task_id:
            self.finals[task_id].append(message)
            if task_id in self.pending:
                self.pending.discard(task_id)
                self.answered_after_s[task_id] = time.monotonic() - self.acked_at[task_id]

    def _resend(self, ref: str, reconnects: int) -> None:
        # A reconnect since the refusal already sent it again: a second copy
        # would be a second request, with an answer of its own.
        if ref in self.unacked and not self._stopping and reconnects == self.reconnects:
            self._sent_here.discard(ref)  # refused here: this copy is the request again
            asyncio.ensure_future(self._send_request(ref))


async def send_steadily(clients: list[PatientClient], stop: asyncio.Event, hard: Iterator[int],
                        soft: Iterator[int], pace_s: float = 0.05) -> None:
    """Until ``stop``: a soft request (at most 1000) then two hard ones, over the clients in turn."""
    for turn in itertools.count():
        if stop.is_set():
            return
        await clients[turn % len(clients)].ask(next(hard) if turn % 3 else next(soft) % 1000 + 1)
        await asyncio.sleep(pace_s)  # the steady pace of the load: part of the scenario
