"""Bounded per client, end to end: one client inside its limits cannot stop another's job, fill the shared
queue, or make another wait behind its backlog.

Real ``python server.py`` processes, real redis-server, real ``rq worker``
processes, real sockets. Clients are told apart as the server tells them:
by address (a socket bound to 127.0.0.2 is another client than one on
127.0.0.1) or by API key.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import pytest
from redis import Redis
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from jobs import keys
from jobs.factorial import factorial_digits
from tests.conftest import ServedApp
from tests.helpers import Client, async_wait_until, jobs_waiting, wait_until

KEYS = {"alice": "key-of-alice-0123456789", "bob": "key-of-bob-0123456789", "carol": "key-of-carol-0123456789"}


def ws_url(server: ServedApp) -> str:
    # An address, not "localhost": a socket bound to 127.0.0.x cannot reach ::1.
    return f"ws://127.0.0.1:{server.port}/ws"


async def connect_from(server: ServedApp, address: str) -> Client:
    """A WebSocket client on ``address``: another loopback address is another client."""
    return await Client.connect(HTTPRequest(ws_url(server), network_interface=address))


async def http(server: ServedApp, method: str, path: str, key: str = "", body: dict | None = None,
               address: str = "127.0.0.1") -> tuple[int, dict]:
    """One API request as the client of API key ``key`` (or, with none, of ``address``): (status, JSON body)."""
    request = HTTPRequest(f"http://127.0.0.1:{server.port}{path}", method=method,
                          headers={"X-API-Key": key} if key else {}, network_interface=address,
                          body=json.dumps(body) if body is not None else None)
    reply = await AsyncHTTPClient().fetch(request, raise_error=False)
    return reply.code, json.loads(reply.body)


async def final_answer(client: Client, timeout: float = 30.0) -> dict:
    """The next message that is not a pushed ``status``."""
    message = await client.receive(timeout)
    while message["type"] == "status":
        message = await client.receive(timeout)
    return message


async def nothing_more(client: Client, seconds: float = 1.0) -> None:
    with pytest.raises(asyncio.TimeoutError):
        message = await client.receive(seconds)
        raise AssertionError(f"got {message} after cancelled")


# --- another client's job, with one request --------------------------------------------

@pytest.mark.gen_test(timeout=90)
async def test_another_clients_cancel_and_delete_leave_the_victims_job_running(make_server, make_worker):
    server = make_server()
    n = 44_000  # hard: with no worker yet, its job waits in the queue
    victim = await connect_from(server, "127.0.0.1")
    task_id = (await victim.ask({"type": "factorial", "number": n}))["task_id"]

    # Another client asks for the same n (the protocol gives it the same task_id), then cancels and DELETEs it.
    attacker = await connect_from(server, "127.0.0.2")
    joined = await attacker.ask({"type": "factorial", "number": n})
    assert joined["task_id"] == task_id and joined["status"] == "queued"
    assert await attacker.ask({"type": "cancel", "task_id": task_id}) == {
        "type": "cancelled", "task_id": task_id, "job": "continues"}
    status, body = await http(server, "DELETE", f"/api/tasks/{task_id}", address="127.0.0.2")
    assert (status, body) == (200, {"type": "cancelled", "task_id": task_id, "job": "continues"})
    # A third client that never asked for it: a cancel changes nothing either.
    bystander = await connect_from(server, "127.0.0.3")
    assert (await bystander.ask({"type": "cancel", "task_id": task_id}))["job"] == "continues"
    assert (await bystander.ask({"type": "result", "task_id": task_id}))["status"] == "queued"

    make_worker()
    done = await final_answer(victim)
    assert done["type"] == "success" and done["task_id"] == task_id and done["result"] == factorial_digits(n)
    await nothing_more(attacker)


@pytest.mark.gen_test(timeout=90)
async def test_a_delete_withdraws_only_the_callers_own_http_hold(make_server, make_worker):
    server = make_server(api_keys=",".join(f"{name}:{key}" for name, key in KEYS.items()))
    alice, bob, carol = KEYS["alice"], KEYS["bob"], KEYS["carol"]
    shared, own = 45_000, 46_000

    status, posted = await http(server, "POST", "/api/factorial", alice, body={"number": shared})
    assert status == 202
    task_id = posted["task_id"]
    # Bob never asked for it: his DELETE withdraws nothing.
    assert await http(server, "DELETE", f"/api/tasks/{task_id}", bob) == (
        200, {"type": "cancelled", "task_id": task_id, "job": "continues"})
    # Carol asks for it too, then withdraws her own hold: Alice's still holds the job.
    status, joined = await http(server, "POST", "/api/factorial", carol, body={"number": shared})
    assert status == 202 and joined["task_id"] == task_id
    assert (await http(server, "DELETE", f"/api/tasks/{task_id}", carol))[1]["job"] == "continues"
    assert (await http(server, "GET", f"/api/tasks/{task_id}", alice))[1] == {
        "type": "status", "task_id": task_id, "status": "queued"}

    # Alice's own DELETE of a job only she holds stops it.
    _, mine = await http(server, "POST", "/api/factorial", alice, body={"number": own})
    assert (await http(server, "DELETE", f"/api/tasks/{mine['task_id']}", alice))[1]["job"] == "stopped"
    status, looked_up = await http(server, "GET", f"/api/tasks/{mine['task_id']}", alice)
    assert status == 200 and looked_up["code"] == "cancelled"

    make_worker()

    async def ended():  # the answer is polled, as an HTTP client does
        reply = await http(server, "GET", f"/api/tasks/{task_id}", alice)
        return reply if reply[1]["type"] != "status" else None

    status, answer = await async_wait_until(ended, timeout=30, interval=0.1, what="the shared job to end")
    assert status == 200 and answer["type"] == "success" and answer["result"] == factorial_digits(shared), answer


# --- the shared queue ---------------------------------------------------------------------------

def open_connections(server: ServedApp) -> float:
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("factorial_open_connections "):
                return float(line.split()[1])
    raise AssertionError("no factorial_open_connections in /metrics")


@pytest.mark.gen_test(timeout=120)
async def test_a_client_that_disconnects_and_refills_cannot_fill_the_shared_queue(make_server, redis_url):
    limit = 10
    server = make_server(max_queue_length=30, client_max_in_flight=limit, client_max_queued=limit)
    redis = Redis.from_url(redis_url)
    acknowledged, refused = [], []
    numbers = iter(range(50_000, 50_100))
    for round_ in range(4):
        refill = await connect_from(server, "127.0.0.1")
        for _ in range(limit):
            await refill.send({"type": "factorial", "number": next(numbers)})
        for _ in range(limit):
            answer = await refill.receive(20)
            (acknowledged if answer["type"] == "result" else refused).append((round_, answer))
        refill.close()
        # The server has seen the close (so in flight counts nothing of it) before the next round.
        await asyncio.to_thread(wait_until, lambda: open_connections(server) == 0, 10, 0.05,
                                "the server to see the close")

    # Disconnecting freed nothing: its jobs still wait, and past CLIENT_MAX_QUEUED it is refused.
    assert all(a["code"] == "rate_limited" and "CLIENT_MAX_QUEUED" in a["result"] for _, a in refused), refused
    assert [r for r, _ in acknowledged].count(0) == limit  # the first round is all accepted
    assert not [r for r, _ in acknowledged if r >= 2]  # the third and fourth wholly refused
    # What waits for its turn is capped at CLIENT_MAX_QUEUED; with no worker, the RQ queue holds one more.
    assert redis.llen(keys.pending("hard") + "127.0.0.1") == limit
    assert len(acknowledged) == limit + 1 == jobs_waiting(redis, "hard")

    victim = await connect_from(server, "127.0.0.2")
    ack = await victim.ask({"type": "factorial", "number": 51_000})
    assert ack["type"] == "result" and ack["status"] == "queued", ack


@pytest.mark.gen_test(timeout=90)
async def test_cancelled_jobs_leave_the_queue_length_at_once(make_server, redis_url):
    server = make_server(max_queue_length=5)
    redis = Redis.from_url(redis_url)
    client = await connect_from(server, "127.0.0.1")
    task_ids = [(await client.ask({"type": "factorial", "number": n}))["task_id"] for n in range(52_000, 52_005)]
    assert jobs_waiting(redis, "hard") == 5
    assert (await client.ask({"type": "factorial", "number": 52_005}))["code"] == "busy"

    # One waiting in the client's pending list, one in the RQ queue: each leaves the count with its answer.
    assert (await client.ask({"type": "cancel", "task_id": task_ids[-1]}))["job"] == "stopped"
    assert jobs_waiting(redis, "hard") == 4
    assert (await client.ask({"type": "factorial", "number": 52_006}))["type"] == "result"
    assert (await client.ask({"type": "factorial", "number": 52_007}))["code"] == "busy"
    assert (await client.ask({"type": "cancel", "task_id": task_ids[0]}))["job"] == "stopped"
    assert jobs_waiting(redis, "hard") == 4
    assert (await client.ask({"type": "factorial", "number": 52_008}))["type"] == "result"


# --- someone else's turn -----------------------------------------------------------------

@pytest.mark.gen_test(timeout=120)
async def test_a_request_that_joins_another_clients_queued_job_gets_its_own_turn(make_server, make_worker,
                                                                               redis_url):
    server = make_server()
    numbers = list(range(20_000, 20_015))  # each a few ms of work
    first = await connect_from(server, "127.0.0.1")
    for n in numbers:
        await first.send({"type": "factorial", "number": n})
    first_ids = [(await first.receive(20))["task_id"] for _ in numbers]

    # Another client asks for the number of the first client's 15th job, at the back of its backlog.
    other = await connect_from(server, "127.0.0.2")
    ack = await other.ask({"type": "factorial", "number": numbers[-1]})
    assert ack["task_id"] == first_ids[-1] and ack["status"] == "queued"

    make_worker()  # one worker: jobs end one at a time, in the order they ran
    asked_at = time.monotonic()
    done = await final_answer(other, 60)
    waited = time.monotonic() - asked_at
    assert done["type"] == "success" and done["result"] == factorial_digits(numbers[-1])

    redis = Redis.from_url(redis_url)
    ended = {t: redis.hget(f"rq:job:{t}", "ended_at") for t in first_ids}
    joined_ended = ended.pop(ack["task_id"])
    before = sorted(t for t, at in ended.items() if at and at < joined_ended)
    # Its own turn: after the job already in the RQ queue and one turn of the
    # first client, not after the first client's 14 others.
    assert len(before) <= 2, (len(before), round(waited, 2))
