"""A server sent SIGTERM stops accepting, sends the acknowledgements it owes, closes with 1012 and exits."""

from __future__ import annotations

import asyncio
import signal
import socket

import pytest

from tests.helpers import Client, async_wait_until


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("localhost", port), timeout=0.5).close()
        return False
    except OSError:
        return True


@pytest.mark.slow
@pytest.mark.gen_test(timeout=60)
async def test_sigterm_sends_the_owed_acknowledgement_then_closes_with_1012(redis_server, make_server, worker):
    draining = make_server()
    other = make_server()
    idle = await Client.connect(draining.ws_url)
    busy = await Client.connect(draining.ws_url)
    # Redis stops answering, so the server holds the request unanswered while it drains.
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        await busy.send({"type": "factorial", "number": 12, "ref": "owed"})
        draining.process.send_signal(signal.SIGTERM)
        await async_wait_until(lambda: refuses(draining.port), timeout=5, what="the listener to close")
        # The idle connection owes nothing: it closes at once.
        assert await asyncio.wait_for(idle.connection.read_message(), 5) is None
        assert idle.connection.close_code == 1012
    finally:
        redis_server.process.send_signal(signal.SIGCONT)

    ack = await busy.receive(10)
    assert ack["type"] == "result" and ack["ref"] == "owed"
    while (message := await asyncio.wait_for(busy.connection.read_message(), 10)) is not None:
        assert '"success"' in message  # the result itself may make it out before the close
    assert busy.connection.close_code == 1012
    assert draining.process.wait(15) == 0

    # The acknowledged job is not lost: another server answers it.
    again = await Client.connect(other.ws_url)
    answer = await again.ask({"type": "result", "task_id": ack["task_id"]})
    if answer["type"] == "status":
        answer = await again.receive(10)
    assert answer["type"] == "success" and answer["result"] == 479001600
