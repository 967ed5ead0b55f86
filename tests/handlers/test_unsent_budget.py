"""What a connection may hold of the server: unsent bytes (CLIENT_MAX_UNSENT_BYTES), requests in flight
counted per request, and the rate of requests that start no job.

Real redis-server, real rq worker, real sockets. The client that never reads
is a bare socket that does the WebSocket handshake and then only writes, with
a small receive buffer, against ``python server.py`` run as a process of its
own, so that the server's memory (VmRSS) is measured alone.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import struct
import time
from concurrent.futures import Future

import pytest
import tornado.web
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.websocket import WebSocketHandler

from handlers.outbox import ENTRY_BYTES, HIGH_WATER_BYTES, UNREAD_CLOSE_CODE, ClientUnsent, Outbox
from tests.helpers import Client, async_wait_until, free_port

log = logging.getLogger(__name__)

MIB = 1024 * 1024
BIG = 100_000  # 100000! is 456,574 digits: a 456 KB success message
HARD = 200_000  # with no worker running, its job stays queued


# --- the outbox, alone ------------------------------------------------------------

class FakeStream:
    """Tornado's side of the outbox: each write's future ends when the test says the socket took it."""

    def __init__(self):
        self.frames: list = []
        self.pending: list[Future] = []
        self.open = True

    def write(self, frame):
        if not self.open:
            return None
        self.frames.append(frame)
        self.pending.append(Future())
        return self.pending[-1]

    def buffer_empty(self) -> bool:
        return not self.pending

    def take(self, count: int = 1) -> None:
        for _ in range(count):
            self.pending.pop(0).set_result(None)


def success(size: int) -> bytes:
    return b'{"type":"success","result":"' + b"7" * size + b'"}'


def test_frames_wait_beyond_the_high_water_mark_and_leave_in_order_as_the_socket_takes_them():
    stream = FakeStream()
    outbox = Outbox(limit=1000, write=stream.write, buffer_empty=stream.buffer_empty)
    assert outbox.high_water == 500
    for i in range(6):
        assert outbox.send(f'{{"i":{i},"pad":"{"x" * 130}"}}') == 146
    assert len(stream.frames) == 3 and not outbox.empty  # a fourth 146 bytes would pass 500
    stream.take(3)
    assert len(stream.frames) == 6 and outbox.empty
    assert [json.loads(f)["i"] for f in stream.frames] == list(range(6))


def test_one_result_owed_to_many_refs_is_held_once_and_each_frame_carries_its_ref():
    stream = FakeStream()
    outbox = Outbox(limit=64 * 1024, write=stream.write, buffer_empty=stream.buffer_empty)
    result = success(20_000)
    for ref in range(100):
        outbox.send(result, ref)
    # 2,000,000 bytes owed, 20 KB held: one message, and a ref per frame waiting.
    assert len(stream.frames) == 1 and outbox.unsent < 2 * len(result) + 100 * ENTRY_BYTES
    assert not outbox.over_limit
    while stream.pending:
        stream.take()
    assert [json.loads(f)["ref"] for f in stream.frames] == list(range(100))


def test_owing_more_than_the_limit_is_over_it_but_a_big_frame_alone_is_not():
    stream = FakeStream()
    outbox = Outbox(limit=1000, write=stream.write, buffer_empty=stream.buffer_empty)
    outbox.send(success(5000))  # bigger than the limit, into an empty buffer: it goes
    assert len(stream.frames) == 1 and not outbox.over_limit
    outbox.send(success(10))  # waits behind it: now more is owed than the limit
    assert outbox.over_limit
    outbox.drop()
    assert outbox.send(success(10)) == 0 and outbox.unsent < 6000


def test_a_closed_connection_drops_what_waits():
    stream = FakeStream()
    outbox = Outbox(limit=0, write=stream.write, buffer_empty=stream.buffer_empty)
    assert outbox.high_water == HIGH_WATER_BYTES  # 0: no limit, still paced
    stream.open = False
    assert outbox.send(success(10)) == 0 and outbox.closed


def test_a_clients_connections_together_are_held_to_the_total_and_each_counts_what_it_is_owed():
    """CLIENT_MAX_UNSENT_BYTES_TOTAL: connections each under their own budget pass the client's together."""
    unsent = ClientUnsent(limit=10_000)
    streams = [FakeStream() for _ in range(3)]
    boxes = [Outbox(limit=8_000, write=s.write, buffer_empty=s.buffer_empty, share=unsent.join("alice"))
             for s in streams]
    other = Outbox(limit=8_000, write=FakeStream().write, buffer_empty=lambda: False, share=unsent.join("bob"))
    for box in boxes[:2]:
        box.send(success(3000))  # into the empty buffer
        box.send(success(1000))  # waits: about 4,000 owed to each
    assert not any(box.over_limit for box in boxes) and unsent.owed_to("alice") > 8_000
    boxes[2].send(success(3000))
    boxes[2].send(success(1000))
    assert boxes[2].over_limit and not boxes[2].unsent > 8_000  # the client's total, not its own
    other.send(success(3000))
    other.send(success(1000))
    assert not other.over_limit  # another client's share is its own
    # What a connection is owed leaves the share as its socket takes it, and all of it when it closes.
    streams[0].take()
    streams[0].take()
    assert boxes[0].unsent == 0
    boxes[1].drop()
    assert unsent.owed_to("alice") == boxes[2].unsent and not boxes[2].over_limit
    for box in boxes:
        unsent.leave("alice", box.share)
    assert unsent.owed_to("alice") == 0 and "alice" not in unsent and "bob" in unsent


# --- a client that never reads -----------------------------------------------------

class SilentClient:
    """A WebSocket client on a bare socket: the handshake, then it writes requests and reads nothing."""

    def __init__(self, port: int, receive_buffer: int = 4096):
        self.sock = socket.socket()
        # Before connect, so the window it offers the server stays small.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        self.received = b""
        while b"\r\n\r\n" not in self.received:
            chunk = self.sock.recv(4096)
            assert chunk and len(self.received) < 65536, f"handshake failed: {self.received!r}"
            self.received += chunk
        head, self.received = self.received.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.sock.setblocking(False)

    @staticmethod
    def frame(message: dict) -> bytes:
        """A masked text frame (RFC 6455, section 5.2: a client masks every frame)."""
        payload = json.dumps(message).encode()
        mask = os.urandom(4)
        length = len(payload)
        header = struct.pack("!BB", 0x81, 0x80 | length) if length < 126 else struct.pack("!BBH", 0x81, 0xFE, length)
        return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    async def send(self, message: dict) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, self.frame(message))

    def read_to_close(self, timeout: float) -> tuple[int, str]:
        """Now read everything: skip the messages, return the close frame's code and reason. Blocking."""
        self.sock.setblocking(True)
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        data = bytearray(self.received)
        position = 0
        while time.monotonic() < deadline:
            while True:  # every whole frame in hand (a server does not mask)
                if len(data) - position < 2:
                    break
                opcode, length = data[position] & 0x0F, data[position + 1] & 0x7F
                start = position + 2
                if length == 126:
                    length, start = struct.unpack_from("!H", data, start)[0], start + 2
                elif length == 127:
                    length, start = struct.unpack_from("!Q", data, start)[0], start + 8
                if len(data) < start + length:
                    break
                if opcode == 0x8:
                    code = struct.unpack_from("!H", data, start)[0]
                    return code, bytes(data[start + 2 : start + length]).decode()
                position = start + length
            del data[:position]
            position = 0
            chunk = self.sock.recv(1 << 20)
            assert chunk, "the connection ended without a close frame"
            data += chunk
        raise AssertionError(f"no close frame within {timeout} s")

    def read_bytes(self, count: int, timeout: float) -> None:
        """Now read ``count`` bytes (after the handshake's), and drop them. Blocking."""
        self.sock.setblocking(True)
        self.sock.settimeout(timeout)
        left = count - len(self.received)
        deadline = time.monotonic() + timeout
        while left > 0:
            assert time.monotonic() < deadline, f"{left} bytes still unread after {timeout} s"
            chunk = self.sock.recv(min(left, 1 << 20))
            assert chunk, "the connection ended early"
            left -= len(chunk)

    def close(self) -> None:
        self.sock.close()


def metric(body: bytes, name: str) -> float:
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return 0.0


# --- what the outbox counts on in Tornado ------------------------------------------------

FLOOD_FRAMES, FLOOD_BYTES = 20, 500_000


class Flooding(WebSocketHandler):
    """Tornado alone: any message is answered with FLOOD_FRAMES frames of FLOOD_BYTES."""

    writes: list = []
    streams: list = []

    def on_message(self, message):
        Flooding.streams.append(self.ws_connection.stream)
        Flooding.writes.extend(self.write_message("x" * FLOOD_BYTES) for _ in range(FLOOD_FRAMES))


@pytest.fixture
def flooding_port(io_loop):
    Flooding.writes, Flooding.streams = [], []
    port = free_port()
    server = HTTPServer(tornado.web.Application([(r"/ws", Flooding)]))
    server.listen(port, "127.0.0.1")
    yield port
    server.stop()


@pytest.mark.gen_test(timeout=30)
async def test_tornado_ends_a_write_only_once_the_socket_took_it_and_says_when_its_buffer_is_empty(flooding_port):
    """handlers/outbox.py reads no private name of Tornado; it relies on these three public behaviours."""
    # Its handshake blocks: off the loop, which serves the other end.
    silent = await asyncio.get_running_loop().run_in_executor(None, SilentClient, flooding_port)
    try:
        await silent.send({"flood": True})
        await async_wait_until(lambda: len(Flooding.writes) == FLOOD_FRAMES, what="the writes")
        stream = Flooding.streams[0]  # WebSocketProtocol.stream: the connection's IOStream
        # 10 MB to a peer that reads nothing: most of it waits in Tornado's buffer, and so does the last write.
        assert stream.writing() and not Flooding.writes[-1].done()
        reading = asyncio.get_running_loop().run_in_executor(
            None, silent.read_bytes, FLOOD_FRAMES * (FLOOD_BYTES + 10), 10.0)  # 10: a frame's header
        await async_wait_until(lambda: all(w.done() for w in Flooding.writes), what="every write to end")
        await reading
        assert not stream.writing()
    finally:
        silent.close()


# --- a client that never reads, against the server ------------------------------------

@pytest.mark.slow
@pytest.mark.gen_test(timeout=120)
async def test_a_client_that_never_reads_is_closed_with_1008_within_the_budget_and_others_stay_fast(
        make_server, worker):
    server = make_server(client_max_unsent_bytes=8 * MIB)
    url = f"ws://127.0.0.1:{server.port}/ws"
    # Others are other clients (other loopback addresses): the silent one's rate is its own.
    other = await Client.connect(HTTPRequest(url, network_interface="127.0.0.2"))
    _, stored = await other.factorial(BIG, timeout=60)
    assert stored["digits"] == 456_574
    await other.factorial(5)

    async def closed_unread() -> float:
        response = await AsyncHTTPClient().fetch(HTTPRequest(f"http://127.0.0.1:{server.port}/metrics",
                                                             network_interface="127.0.0.3"))
        return metric(response.body, "factorial_connections_closed_unread_total")

    assert await closed_unread() == 0
    before = server.rss_kib()
    peak = before
    silent = SilentClient(server.port)
    latencies: list[float] = []
    try:
        async def ask_without_reading() -> None:
            for i in range(2000):  # about 200 a second, its per-connection rate, for at most 10 s
                await silent.send({"type": "factorial", "number": BIG, "ref": i})
                await asyncio.sleep(0.005)  # the pace of its sends: part of the scenario

        async def time_other_client() -> None:
            while True:
                began = time.perf_counter()
                ack, done = await other.factorial(5)
                latencies.append(time.perf_counter() - began)
                assert ack["status"] == "finished" and done["result"] == 120

        asking = asyncio.ensure_future(ask_without_reading())
        timing = asyncio.ensure_future(time_other_client())
        deadline = time.monotonic() + 20
        closed = False
        while not (closed and len(latencies) >= 50):
            assert time.monotonic() < deadline, f"not closed within 20 s (RSS {server.rss_kib()} KiB)"
            assert not timing.done() or timing.result()  # re-raises the timing client's failure
            peak = max(peak, server.rss_kib())
            # Bounded as it goes: a server that buffers without limit fails here, not out of memory.
            assert peak - before < 64 * 1024, f"RSS grew by {peak - before} KiB"
            closed = closed or await closed_unread() >= 1
            await asyncio.sleep(0.02)  # the sampling interval of a loop bounded by the deadline above
        asking.cancel()
        timing.cancel()
        # Its close frame waits behind what it was sent: reading now finds it.
        code, reason = await asyncio.get_running_loop().run_in_executor(None, silent.read_to_close, 4.0)
    finally:
        silent.close()
        other.close()
    latencies.sort()
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    log.info("never-reading client closed with %d (%r); server RSS %d KiB before, peak %d KiB (+%d KiB, budget "
             "8 MiB); other client's 5!: %d requests, median %.1f ms, p95 %.1f ms", code, reason, before, peak,
             peak - before, len(latencies), 1000 * latencies[len(latencies) // 2], 1000 * p95)
    assert code == UNREAD_CLOSE_CODE and "CLIENT_MAX_UNSENT_BYTES" in reason
    assert peak - before < 8 * 1024 + 8 * 1024, f"RSS grew by {peak - before} KiB with a budget of 8 MiB"
    # "Others stay fast": a speed, not the budget's contract, so with room for a loaded machine; a server that
    # stalled its loop on the silent client's backlog would take seconds.
    assert p95 < 0.3, f"p95 of 5! was {p95 * 1000:.1f} ms"


@pytest.mark.slow
@pytest.mark.gen_test(timeout=120)
async def test_a_clients_silent_connections_together_are_closed_past_the_total_though_each_is_under_its_own(
        make_server, worker):
    server = make_server(client_max_unsent_bytes=16 * MIB, client_max_unsent_bytes_total=4 * MIB)
    url = f"ws://127.0.0.1:{server.port}/ws"
    numbers = [BIG + i for i in range(14)]  # 14 distinct 456 KB results: 6.4 MB owed to each connection
    other = await Client.connect(HTTPRequest(url, network_interface="127.0.0.2"))
    silent = []
    try:
        for number in numbers:  # stored first, so that each request is answered at once
            await other.factorial(number, timeout=60)
        before = server.rss_kib()
        silent = [SilentClient(server.port) for _ in range(5)]
        for connection in silent:
            for ref, number in enumerate(numbers):
                await connection.send({"type": "factorial", "number": number, "ref": ref})

        async def closed_unread() -> float:
            response = await AsyncHTTPClient().fetch(HTTPRequest(f"http://127.0.0.1:{server.port}/metrics",
                                                                 network_interface="127.0.0.3"))
            return metric(response.body, "factorial_connections_closed_unread_total")

        await async_wait_until(closed_unread, timeout=20, interval=0.05,
                               what="a connection of the client to be closed for its client's total")
        grown = server.rss_kib() - before
        closed = await closed_unread()
        print(f"5 silent connections of one client, 6.4 MB owed to each (its own budget 16 MiB): {closed:.0f} "
              f"closed with 1008 for the client's 4 MiB together; server RSS +{grown} KiB")
        # Bounded by the total: each connection's Tornado buffer, what the kernel holds, one frame more.
        assert grown < 5 * 4 * 1024 + 16 * 1024, f"RSS grew by {grown} KiB"
        # Another client is served meanwhile, and owed nothing of the first one's total.
        _, done = await other.factorial(5)
        assert done["result"] == 120
    finally:
        for connection in silent:
            connection.close()
        other.close()


# --- a client that reads gets everything it asked for ---------------------------------

@pytest.mark.slow
@pytest.mark.gen_test(timeout=90)
@pytest.mark.parametrize("settings", [{"client_max_unsent_bytes": 2 * MIB}], indirect=True)
async def test_a_client_that_reads_gets_a_big_result_for_each_of_its_refs_whatever_the_budget(
        settings, app, ws_url, make_worker):
    client = await Client.connect(ws_url)
    refs = range(40)  # 40 x 456 KB: 18 MB owed at once, nine times the budget
    try:
        for ref in refs:
            ack = await client.ask({"type": "factorial", "number": BIG + 1, "ref": ref})
            assert ack["type"] == "result" and ack["status"] == "queued", ack
        make_worker()
        got = {}
        while len(got) < len(refs):
            message = await client.receive(timeout=60)
            if message["type"] == "success":
                got[message["ref"]] = message["digits"]
        assert got == {ref: 456_579 for ref in refs}
        assert app.context.metrics.closed_unread._value.get() == 0
    finally:
        client.close()


# --- every request counts -------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("settings", [{"max_in_flight": 3}], indirect=True)
async def test_repeats_of_a_task_the_connection_waits_for_count_toward_its_in_flight_limit(settings, app, ws_url):
    client = await Client.connect(ws_url)
    try:
        acks = [await client.ask({"type": "factorial", "number": HARD, "ref": ref}) for ref in range(3)]
        assert {a["type"] for a in acks} == {"result"} and len({a["task_id"] for a in acks}) == 1
        refused = await client.ask({"type": "factorial", "number": HARD, "ref": 3})
        assert refused["code"] == "rate_limited" and "in flight" in refused["result"] and refused["ref"] == 3
        # A lookup of it is a request too; withdrawing the waits makes room again.
        assert (await client.ask({"type": "result", "task_id": acks[0]["task_id"]}))["code"] == "rate_limited"
        cancelled = await client.ask({"type": "cancel", "task_id": acks[0]["task_id"]})
        # The job stops in Redis before the cancel is answered, and the delivery loop may push that end to
        # this connection's own three waits first (the protocol says nothing follows the answer, not what
        # may come before it).
        for _ in range(3):
            if cancelled["type"] == "cancelled":
                break
            assert cancelled["type"] == "error" and cancelled["code"] == "cancelled", cancelled
            assert cancelled["task_id"] == acks[0]["task_id"] and cancelled.get("ref") in (0, 1, 2), cancelled
            cancelled = await client.receive()
        assert cancelled["type"] == "cancelled", cancelled
        assert (await client.ask({"type": "factorial", "number": HARD, "ref": 4}))["type"] == "result"
    finally:
        client.close()


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("settings", [{"client_max_in_flight": 2}], indirect=True)
async def test_repeats_of_a_task_over_http_count_toward_the_clients_in_flight_limit(settings, app, http_client,
                                                                                   base_url):
    async def post():
        response = await http_client.fetch(base_url + "/api/factorial", method="POST",
                                           body=json.dumps({"number": HARD}), raise_error=False)
        return response.code, json.loads(response.body)

    accepted = [await post() for _ in range(2)]
    assert [code for code, _ in accepted] == [202, 202]
    code, body = await post()
    assert code == 429 and body["code"] == "rate_limited" and "at most 2 unanswered" in body["result"]
    # The client's DELETE withdraws its hold: both its requests for the task leave the count.
    response = await http_client.fetch(f"{base_url}/api/tasks/{accepted[0][1]['task_id']}", method="DELETE")
    assert json.loads(response.body)["type"] == "cancelled"
    assert [(await post())[0] for _ in range(2)] == [202, 202]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("settings", [{"client_max_requests_per_s": 5, "api_keys": (
    "get:key-get", "delete:key-delete", "health:key-health", "metrics:key-metrics")}], indirect=True)
async def test_lookups_cancels_health_and_metrics_count_against_the_clients_request_rate(settings, app, http_client,
                                                                                       base_url):
    task_id = "0123456789abcdef0123456789abcdef"
    # Each kind under a key of its own: a bucket of its own, 5 requests of burst.
    kinds = {"get": ("GET", f"/api/tasks/{task_id}"), "delete": ("DELETE", f"/api/tasks/{task_id}"),
             "health": ("GET", "/healthz"), "metrics": ("GET", "/metrics")}
    for name, (method, path) in kinds.items():
        codes = []
        for _ in range(10):
            response = await http_client.fetch(base_url + path, method=method, raise_error=False,
                                               headers={"X-API-Key": f"key-{name}"})
            codes.append(response.code)
            if response.code == 429:
                body = json.loads(response.body)
                assert body["code"] == "rate_limited" and "at most 5 per second" in body["result"], body
                assert response.headers["Retry-After"] == "1"
        refused = codes.count(429)
        # 10 asked well within 2 s: the burst of 5 and at most a few refilled tokens pass.
        assert 5 <= len(codes) - refused <= 8 and refused >= 2, (name, codes)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("settings", [{"client_max_requests_per_s": 5}], indirect=True)
async def test_cancels_on_a_websocket_count_against_the_clients_request_rate(settings, app, ws_url):
    client = await Client.connect(ws_url)
    try:
        for ref in range(10):
            await client.send({"type": "cancel", "task_id": "0123456789abcdef0123456789abcdef", "ref": ref})
        answers = [await client.receive() for _ in range(10)]
    finally:
        client.close()
    assert [a["ref"] for a in answers] == list(range(10))  # in order
    refused = [a for a in answers if a["code"] == "rate_limited"]
    assert all(a["code"] == "unknown_task_id" for a in answers if a not in refused)
    assert 2 <= len(refused) <= 5 and all("at most 5 per second" in a["result"] for a in refused), answers
