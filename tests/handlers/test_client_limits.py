"""Per-client limits, counted in Redis: shared by every connection and every server process of one Redis.

Real redis-server, real ``python server.py`` processes, real WebSocket and
HTTP clients. A client socket bound to 127.0.0.2 is another client to the
server (another loopback address), as is a key holder or a forwarded address
from a trusted proxy.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from handlers.limits import ClientCounts
from jobs import keys
from jobs.quota import Admission, QuotaStore
from tests.conftest import ServedApp
from tests.helpers import Client, async_wait_until, wait_until, jobs_waiting

HARD = 200_000  # a hard number: with no worker running its job stays queued


def ws(server: ServedApp) -> str:
    # 127.0.0.1, not localhost: a client bound to 127.0.0.2 must reach it over IPv4.
    return f"ws://127.0.0.1:{server.port}/ws"


async def handshake(server: ServedApp, source: str | None = None, **headers):
    """A connected Client, or the HTTP error the handshake got."""
    try:
        headers = {name.replace("_", "-"): value for name, value in headers.items()}
        return await Client.connect(HTTPRequest(ws(server), network_interface=source, headers=headers))
    except HTTPClientError as err:
        return err


def refused_with(outcome, status: int, words: str) -> bool:
    if not isinstance(outcome, HTTPClientError) or outcome.code != status:
        return False
    assert outcome.response.headers.get("Retry-After") == "1"
    body = json.loads(outcome.response.body)
    return body["type"] == "error" and body["code"] == "rate_limited" and words in body["result"]


@pytest.fixture
def servers(make_server):
    """``count`` servers on the test's Redis with these settings; make_server stops them."""

    def start(count: int = 1, **env) -> list[ServedApp]:
        return [make_server(**env) for _ in range(count)]

    return start


def close_all(clients):
    for client in clients:
        if isinstance(client, Client):
            client.close()


# --- the shared count, directly ------------------------------------------------------

def test_two_servers_share_one_connection_count_and_a_dead_ones_counts_lapse(make_settings, redis_client):
    settings = make_settings(client_max_connections=3, client_lease_s=1.0)
    redis = redis_client
    a, b = QuotaStore(redis, settings, "a"), QuotaStore(redis, settings, "b")
    _, (verdict,) = a.exchange({}, [Admission("198.18.0.1", "connection", 2)])
    assert verdict.admitted == 2
    _, (verdict,) = b.exchange({}, [Admission("198.18.0.1", "connection", 2)])
    assert (verdict.admitted, verdict.limit) == (1, "connections")
    _, (other,) = b.exchange({}, [Admission("198.18.0.2", "connection", 3)])
    assert other.admitted == 3  # another client has a count of its own

    # a stops renewing its lease (it died): within the lease, its 2 still count...
    _, (verdict,) = b.exchange({"198.18.0.1": (1, 0)}, [Admission("198.18.0.1", "connection", 1)])
    assert verdict.admitted == 0
    # ...and once it has run out (in Redis's time), they are gone.
    wait_until(lambda: b.exchange({"198.18.0.1": (1, 0)}, [Admission("198.18.0.1", "connection", 2)])[1][0].admitted,
               timeout=5, what="the dead server's connections to stop counting")
    assert not redis.exists("factorial:quota:server:a")


def test_a_rate_is_one_bucket_for_every_server(make_settings, redis_client):
    settings = make_settings(client_max_requests_per_s=8, client_max_in_flight=0)
    redis = redis_client
    a, b = QuotaStore(redis, settings, "a"), QuotaStore(redis, settings, "b")
    _, (first,) = a.exchange({}, [Admission("c", "requests", 5)])
    _, (second,) = b.exchange({}, [Admission("c", "requests", 5)])
    assert first.admitted == 5 and second.admitted == 3 and second.limit == "requests_per_s"


def test_requests_in_flight_add_up_across_servers(make_settings, redis_client):
    settings = make_settings(client_max_in_flight=10, client_max_requests_per_s=0)
    redis = redis_client
    a, b = QuotaStore(redis, settings, "a"), QuotaStore(redis, settings, "b")
    a.exchange({"c": (1, 6)}, [])
    _, (verdict,) = b.exchange({"c": (1, 0)}, [Admission("c", "requests", 7)])
    assert (verdict.admitted, verdict.limit) == (4, "in_flight")
    # a's answers left: its count goes down, and b may send more.
    a.exchange({"c": (1, 0)}, [])
    _, (verdict,) = b.exchange({}, [Admission("c", "requests", 7)])
    assert verdict.admitted == 6


# --- end to end: two server processes on one Redis -----------------------------------

@pytest.mark.gen_test(timeout=90)
async def test_connections_of_one_client_are_counted_across_two_servers(servers):
    a, b = servers(2, client_max_connections=3)
    held = [await handshake(a), await handshake(a), await handshake(b)]
    try:
        assert all(isinstance(c, Client) for c in held), held
        for server in (a, b):
            assert refused_with(await handshake(server), 429, "at most 3 open at once")
        # Another client (another loopback address) is not held back by this one.
        other = await handshake(b, source="127.0.0.2")
        assert isinstance(other, Client)
        held.append(other)
        assert (await other.ask({"type": "factorial", "number": 5}))["type"] == "result"
        # One closes on a; a new one on b is let in once a has written its count.
        held.pop(0).close()

        async def admitted_on_b():
            outcome = await handshake(b)
            if isinstance(outcome, Client):
                held.append(outcome)
                return True
            assert refused_with(outcome, 429, "at most 3")
            return False

        await async_wait_until(admitted_on_b, timeout=10, interval=0.1, what="a closed connection to stop counting")
    finally:
        close_all(held)


@pytest.mark.gen_test(timeout=90)
async def test_requests_in_flight_are_counted_across_two_servers_and_refused_ones_enqueue_nothing(
        servers, redis_client):
    a, b = servers(2, client_max_in_flight=4, max_in_flight=100)
    on_a, on_b = await Client.connect(ws(a)), await Client.connect(ws(b))
    try:
        numbers = {on_a: range(HARD, HARD + 3), on_b: range(HARD + 3, HARD + 6)}
        answers = {}
        for client, batch in numbers.items():
            for n in batch:
                await client.send({"type": "factorial", "number": n, "ref": n})
        for client, batch in numbers.items():
            for _ in batch:
                message = await client.receive()
                answers[message["ref"]] = message
        acks = [n for n, m in answers.items() if m["type"] == "result"]
        refused = [n for n, m in answers.items() if m["type"] == "error"]
        assert len(acks) == 4 and len(refused) == 2, answers
        for n in refused:
            assert answers[n]["code"] == "rate_limited" and "at most 4 unanswered" in answers[n]["result"]
            assert not redis_client.exists(keys.by_number(n))  # nothing enqueued for it
        assert jobs_waiting(redis_client, "hard") == 4
        # A lookup is a request too; a light client elsewhere is not affected.
        light = await Client.connect(HTTPRequest(ws(a), network_interface="127.0.0.2"))
        assert (await light.ask({"type": "factorial", "number": HARD + 10}))["type"] == "result"
        light.close()
    finally:
        on_a.close()
        on_b.close()


@pytest.mark.gen_test(timeout=90)
async def test_the_request_rate_is_shared_by_two_servers_and_the_http_api(servers, redis_client):
    a, b = servers(2, client_max_requests_per_s=10, max_requests_per_s=1000)
    on_a, on_b = await Client.connect(ws(a)), await Client.connect(ws(b))
    try:
        for i in range(8):
            await on_a.send({"type": "factorial", "number": i, "ref": i})
            await on_b.send({"type": "factorial", "number": 100 + i, "ref": i})
        replies = [await on_a.receive() for _ in range(8)] + [await on_b.receive() for _ in range(8)]
        limited = [m for m in replies if m["type"] == "error"]
        # 10 per second, with one second's burst: 16 sent within well under a
        # second leave at most a couple of refilled tokens beyond the 10.
        assert 4 <= len(limited) <= 6, replies
        assert all(m["code"] == "rate_limited" and "at most 10 per second" in m["result"] for m in limited)
        response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{a.port}/api/factorial", method="POST",
                                                 body='{"number": 7}', raise_error=False)
        assert response.code == 429 and json.loads(response.body)["code"] == "rate_limited"
        # After a second the bucket has refilled: a duration (the rate's refill time), not a wait for a condition.
        await asyncio.sleep(1.1)
        assert (await on_b.ask({"type": "factorial", "number": 3}))["type"] == "result"
    finally:
        on_a.close()
        on_b.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_killed_servers_connections_stop_counting_after_the_lease(servers):
    a, b = servers(2, client_max_connections=2, client_lease_s=2)
    held = [await handshake(a), await handshake(a)]
    try:
        assert all(isinstance(c, Client) for c in held)
        assert refused_with(await handshake(b), 429, "at most 2")
        os.kill(a.process.pid, signal.SIGKILL)
        a.process.wait()

        async def admitted():
            outcome = await handshake(b)
            if isinstance(outcome, Client):
                held.append(outcome)
                return True
            return False

        # The lease (2 s), and 5 s of slack: the contract is that the counts lapse, not to the tick.
        await async_wait_until(admitted, timeout=2 + 5, interval=0.1,
                               what="the killed server's counts to lapse with its lease")
        # Counting goes on: the client has 1 of its 2 on b now.
        second = await handshake(b)
        assert isinstance(second, Client)
        held.append(second)
        assert refused_with(await handshake(b), 429, "at most 2")
    finally:
        close_all(held)


# --- who counts as one client --------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_forwarded_addresses_are_distinct_clients_only_behind_a_trusted_proxy(servers):
    trusting, doubting = servers(1, client_max_connections=1, trusted_proxies="127.0.0.1")[0], \
        servers(1, client_max_connections=1)[0]
    held = []
    try:
        held.append(await handshake(trusting, X_Forwarded_For="198.18.0.5"))
        held.append(await handshake(trusting, X_Forwarded_For="198.18.0.6"))
        assert all(isinstance(c, Client) for c in held)
        assert refused_with(await handshake(trusting, X_Forwarded_For="203.0.113.9, 198.18.0.5"), 429, "at most 1")

        held.append(await handshake(doubting, X_Forwarded_For="198.18.0.5"))
        assert isinstance(held[-1], Client)
        # Not a trusted proxy: the header is ignored, and this is still 127.0.0.1.
        assert refused_with(await handshake(doubting, X_Forwarded_For="198.18.0.6"), 429, "at most 1")
        assert refused_with(await handshake(doubting, X_Real_IP="198.18.0.7"), 429, "at most 1")
    finally:
        close_all(held)


@pytest.mark.gen_test(timeout=60)
async def test_api_keys_name_clients_and_can_be_required(servers):
    server = servers(1, client_max_connections=1, api_keys="alice:key-a,bob:key-b", api_keys_required="true")[0]
    held = []
    try:
        held.append(await handshake(server, X_API_Key="key-a"))
        held.append(await handshake(server, Authorization="Bearer key-b"))
        assert all(isinstance(c, Client) for c in held)
        assert refused_with(await handshake(server, X_API_Key="key-a"), 429, "at most 1")
        missing = await handshake(server, source="127.0.0.2")
        assert isinstance(missing, HTTPClientError) and missing.code == 401
        assert json.loads(missing.response.body)["code"] == "unauthorized"
    finally:
        close_all(held)


@pytest.mark.gen_test(timeout=120)
async def test_a_server_stopped_with_sigterm_gives_its_counts_back_at_once(servers):
    # A lease far longer than the test: only the stopping server's own goodbye can free the count.
    a, b = servers(2, client_max_connections=2, client_lease_s=600)
    held = [await handshake(a), await handshake(a)]
    try:
        assert all(isinstance(c, Client) for c in held)
        assert refused_with(await handshake(b), 429, "at most 2")
        a.stop()  # SIGTERM: drains, closes its connections, and takes back its counts
        fresh = await handshake(b)
        assert isinstance(fresh, Client), fresh
        held.append(fresh)
    finally:
        close_all(held)


# --- this process's own count ---------------------------------------------------------

class Member:
    """A connection, as ClientCounts sees one."""


def test_counts_are_read_from_the_members_and_the_in_flight_counter_and_a_client_that_left_is_written_as_zero():
    counts = ClientCounts()
    socket, other = Member(), Member()
    counts.join("198.18.0.1", socket)
    counts.join("198.18.0.1", other)
    on_socket = [counts.in_flight.start("198.18.0.1", socket) for _ in range(3)]
    on_other = counts.in_flight.start("198.18.0.1", other)
    over_http = [counts.in_flight.start("198.18.0.1") for _ in range(2)]
    assert counts.take([]) == {"198.18.0.1": (2, 6)}
    assert counts.take([]) == {}  # nothing changed since
    for ticket in on_socket:
        ticket.end()
    on_socket[0].end()  # ending twice takes one back once
    assert counts.take([]) == {"198.18.0.1": (2, 3)}
    assert counts.in_flight.of(socket) == 0 and counts.in_flight.of(other) == 1
    for member in (socket, other):
        counts.in_flight.end_all(member)  # as a closing connection does
        counts.leave(member)
    counts.leave(socket)  # twice is harmless
    assert counts.take([]) == {"198.18.0.1": (0, 2)} and counts.active  # the HTTP requests still count
    assert on_other.ended
    for ticket in over_http:
        ticket.end()
    assert counts.take([]) == {"198.18.0.1": (0, 0)} and not counts.active


def test_counting_off_keeps_nothing():
    counts = ClientCounts(enabled=False)
    counts.join("198.18.0.1", Member())
    ticket = counts.in_flight.start("198.18.0.1")  # still counted, for MAX_IN_FLIGHT per connection
    assert counts.in_flight.of_client("198.18.0.1") == 1
    assert not counts.active and counts.take([], everyone=True) == {}
    ticket.end()


@pytest.mark.gen_test(timeout=90)
async def test_jobs_accepted_over_http_count_in_flight_until_they_end(servers, make_worker):
    server = servers(1, client_max_in_flight=2)[0]
    http = AsyncHTTPClient()

    async def post(n: int):
        response = await http.fetch(f"http://127.0.0.1:{server.port}/api/factorial", method="POST",
                                    body=json.dumps({"number": n}), raise_error=False)
        return response.code, json.loads(response.body)

    assert [(await post(n))[0] for n in (HARD, HARD + 1)] == [202, 202]
    code, body = await post(HARD + 2)
    assert code == 429 and "at most 2 unanswered" in body["result"] and body["code"] == "rate_limited"
    # The same client on a WebSocket shares the count.
    socket = await Client.connect(ws(server))
    try:
        refused = await socket.ask({"type": "factorial", "number": 5})
        assert refused["code"] == "rate_limited"
        # Once the jobs end, the client may ask again.
        make_worker()

        async def accepted():
            return (await post(HARD + 3))[0] == 202

        await async_wait_until(accepted, timeout=60, interval=0.2, what="the ended jobs to stop counting")
    finally:
        socket.close()
