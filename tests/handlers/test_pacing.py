"""A connection storm starts a few connections per loop pass (handlers/pacing.py), and silent ones hold no one up."""

from __future__ import annotations

import asyncio
import collections

import pytest
import tornado.web
from tornado.ioloop import IOLoop
from tornado.tcpclient import TCPClient
from tornado.testing import bind_unused_port

from handlers.pacing import PacedHTTPServer
from tests.helpers import async_wait_until

REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"


class PassCounter:
    """Counts IOLoop passes: a callback that schedules itself again, so it runs once per pass."""

    def __init__(self) -> None:
        self.passes = 0
        self.running = True
        IOLoop.current().add_callback(self._tick)

    def _tick(self) -> None:
        self.passes += 1
        if self.running:
            IOLoop.current().add_callback(self._tick)


def _serve(starts_per_pass: int, seen: list[int], counter: PassCounter) -> tuple[PacedHTTPServer, int]:
    class Hello(tornado.web.RequestHandler):
        def get(self) -> None:
            seen.append(counter.passes)
            self.write("hello")

    server = PacedHTTPServer(tornado.web.Application([(r"/", Hello)]), starts_per_pass=starts_per_pass)
    sock, port = bind_unused_port()
    server.add_sockets([sock])
    return server, port


async def _ask(stream) -> bytes:
    await stream.write(REQUEST)
    return await stream.read_until_close()


@pytest.mark.gen_test(timeout=30)
async def test_requests_that_arrive_together_are_served_a_few_per_loop_pass():
    counter, seen = PassCounter(), []
    server, port = _serve(4, seen, counter)
    try:
        streams = [await TCPClient().connect("127.0.0.1", port) for _ in range(40)]
        # Let the server accept them all before any speaks: then all 40 requests
        # become readable in the same poll, the storm the pacing is for.
        await async_wait_until(lambda: server.connections_not_started >= 40, timeout=10, interval=0.01,
                               what="the server to accept the 40 connections")
        answers = await asyncio.gather(*(_ask(stream) for stream in streams))
        assert all(answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello") for answer in answers)
        assert server.connections_opening == 0  # each left the opening phase at its head
        per_pass = collections.Counter(seen)
        # Each started connection's request runs a fixed number of passes after
        # its start, so a pass serves about as many as one pass started.
        assert max(per_pass.values()) <= 8, per_pass
        assert len(per_pass) >= 5
    finally:
        counter.running = False
        server.stop()
        await server.close_all_connections()


@pytest.mark.gen_test(timeout=30)
async def test_silent_connections_hold_up_no_one_and_are_closed_on_drain():
    counter, seen = PassCounter(), []
    server, port = _serve(2, seen, counter)
    try:
        silent = [await TCPClient().connect("127.0.0.1", port) for _ in range(20)]
        talker = await TCPClient().connect("127.0.0.1", port)
        answer = await asyncio.wait_for(_ask(talker), 5)
        assert answer.endswith(b"hello")
        assert server.connections_not_started == 20
        assert server.connections_opening == 20  # the talker's head ended its opening; the silent ones' go on

        server.stop()
        await server.close_all_connections()
        for stream in silent:
            assert await asyncio.wait_for(stream.read_until_close(), 5) == b""
        assert server.connections_not_started == 0 and server.connections_opening == 0
    finally:
        counter.running = False
