"""Every Redis and Sentinel call ends within its budget (jobs/connection.py).

A real Sentinel watches the test's Redis; a "silent Sentinel" is a TCP
listener that accepts (the kernel does) and never answers, as a paused or
cut-off Sentinel does. redis-py's default policy (10 retries with backoff)
took 15 s to give up on one.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.sentinel import MasterNotFoundError

from jobs import connection
from jobs.connection import SENTINEL_TIMEOUT_S, ParallelSentinel
from settings import Settings
from stack.redis import server_binary
from tests.helpers import free_port, stop_process, wait_until

MASTER = "budget"


@pytest.fixture
def sentinel(redis_server, tmp_path):
    """A real Sentinel on 127.0.0.1 watching the session's Redis; (host, port)."""
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                      f"sentinel monitor {MASTER} 127.0.0.1 {redis_server.port} 1\n")
    process = subprocess.Popen([server_binary(), str(config), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: _names_primary([("127.0.0.1", port)]), timeout=15, what="the Sentinel")
        yield ("127.0.0.1", port)
    finally:
        stop_process(process)


@pytest.fixture
def silent():
    """A listener that never answers: (host, port)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield listener.getsockname()
    listener.close()


def _names_primary(addresses) -> bool:
    try:
        return ParallelSentinel(addresses, sentinel_kwargs=connection.sentinel_options(Settings())).discover_master(
            MASTER) is not None
    except MasterNotFoundError:
        return False


def _timed(fn):
    began = time.monotonic()
    try:
        return fn(), time.monotonic() - began
    except MasterNotFoundError as exc:
        return exc, time.monotonic() - began


def test_a_silent_sentinel_listed_first_does_not_delay_the_answer(sentinel, silent, redis_server):
    sentinels = ParallelSentinel([silent, sentinel], sentinel_kwargs=connection.sentinel_options(Settings()))
    for _ in range(3):  # the silent one's question is still under way the second and third time
        address, took = _timed(lambda: sentinels.discover_master(MASTER))
        assert address == ("127.0.0.1", redis_server.port)
        # Not waiting for the silent one: well under its timeout (what waiting would cost), with room for a
        # loaded machine; the answer itself takes milliseconds.
        assert took < SENTINEL_TIMEOUT_S / 2, took


def test_sentinels_all_silent_cost_one_timeout_not_retries(silent):
    sentinels = ParallelSentinel([silent, silent], sentinel_kwargs=connection.sentinel_options(Settings()))
    error, took = _timed(lambda: sentinels.discover_master(MASTER))
    assert isinstance(error, MasterNotFoundError)
    # One timeout, not retries (a second try would double it): the upper slack is a loaded machine's.
    assert SENTINEL_TIMEOUT_S - 0.1 <= took <= SENTINEL_TIMEOUT_S + 0.8, took


def test_a_client_through_the_sentinels_reaches_the_primary_past_a_silent_one(sentinel, silent, redis_server):
    settings = Settings(redis_url="redis://ignored/0", redis_sentinel_master=MASTER,
                        redis_sentinels=(f"{silent[0]}:{silent[1]}", f"{sentinel[0]}:{sentinel[1]}"))
    client = connection.connect(settings, socket_timeout=2)
    (pong, took) = _timed(client.ping)
    assert pong is True and took < SENTINEL_TIMEOUT_S / 2, took  # not the silent one's timeout


def test_every_connection_has_the_explicit_policy_one_try():
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_sentinels=("127.0.0.1:1",),
                        redis_sentinel_master=MASTER)
    primary = connection.connect(settings)
    sentinel_client = primary.connection_pool.sentinel_manager.sentinels[0]
    for client in (primary, sentinel_client, connection.connect(Settings(redis_url=settings.redis_url))):
        assert client.connection_pool.connection_kwargs["retry"].get_retries() == 0
    # A Redis that is not there: refused once, no backoff between retries.
    began = time.monotonic()
    with pytest.raises(RedisConnectionError):
        connection.connect(Settings(redis_url=settings.redis_url)).ping()
    # No backoff: a refused connection fails in milliseconds; 0.5 s is slack for a loaded machine, and
    # redis-py's default retries with backoff would take seconds.
    assert time.monotonic() - began < 0.5
