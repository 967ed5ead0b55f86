"""PacedListener: at most a few new connections per IOLoop pass, the rest served in later passes."""

from __future__ import annotations

import asyncio
import socket

import pytest
from tornado.netutil import add_accept_handler, bind_sockets

from handlers.listener import PacedListener


@pytest.mark.gen_test(timeout=10)
async def test_at_most_per_pass_connections_are_accepted_in_one_pass():
    [sock] = bind_sockets(0, "127.0.0.1", backlog=64)
    listener = PacedListener(sock, per_pass=3)
    port = sock.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(7)]
    try:
        taken = [listener.accept() for _ in range(3)]
        with pytest.raises(BlockingIOError):
            listener.accept()
        await asyncio.sleep(0.01)  # the next loop passes
        taken += [listener.accept() for _ in range(3)]
        with pytest.raises(BlockingIOError):
            listener.accept()
        for connection, _ in taken:
            connection.close()
    finally:
        for client in clients:
            client.close()
        listener.close()


@pytest.mark.gen_test(timeout=10)
async def test_tornado_accepts_every_waiting_connection_through_it_over_several_passes():
    [sock] = bind_sockets(0, "127.0.0.1", backlog=64)
    port = sock.getsockname()[1]
    accepted_per_pass: list[int] = [0]
    accepted = []

    def on_connection(connection, _address):
        accepted.append(connection)
        accepted_per_pass[-1] += 1

    async def count_passes():
        while len(accepted) < 40:
            await asyncio.sleep(0)
            accepted_per_pass.append(0)

    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    remove = add_accept_handler(PacedListener(sock, per_pass=4), on_connection)
    try:
        await asyncio.wait_for(count_passes(), 5)
        assert len(accepted) == 40
        assert max(accepted_per_pass) <= 4
    finally:
        remove()
        for connection in accepted + clients:
            connection.close()
        sock.close()
