"""The service end to end: real Redis, a real rq worker, real WebSocket clients."""

import json

import pytest
from tornado.websocket import websocket_connect

from jobs.factorial import factorial_digits
from tests.helpers import Client, async_wait_until, jobs_waiting

pytestmark = pytest.mark.usefixtures("worker")


@pytest.mark.gen_test(timeout=30)
async def test_5_factorial_round_trip(ws_url):
    client = await Client.connect(ws_url)
    ack, done = await client.factorial(5)
    assert ack["status"] in ("queued", "started", "finished") and ack["queue"] == "soft"
    assert done == {"type": "success", "task_id": ack["task_id"], "result": 120, "digits": 3}


@pytest.mark.gen_test(timeout=30)
async def test_a_client_of_the_old_service_works_unchanged(ws_url):
    # The old client: send, read an ack of type "result" with a task_id, then a
    # "success" with the same task_id and the value.
    connection = await websocket_connect(ws_url)
    await connection.write_message(json.dumps({"type": "factorial", "number": 5}))
    ack = json.loads(await connection.read_message())
    assert ack["type"] == "result" and "task_id" in ack
    done = json.loads(await connection.read_message())
    assert done["type"] == "success" and done["task_id"] == ack["task_id"] and done["result"] == 120


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("n, queue", [(1000, "soft"), (100_000, "hard")])
async def test_big_results_are_exact(ws_url, n, queue):
    client = await Client.connect(ws_url)
    ack, done = await client.factorial(n, timeout=50)
    if done["type"] == "status":  # hard jobs may announce their start first
        assert done["status"] == "started"
        done = await client.receive(50)
    assert ack["queue"] == queue
    expected = factorial_digits(n)
    assert done["result"] == expected and done["digits"] == len(expected)


@pytest.mark.gen_test(timeout=60)
async def test_lookup_from_a_second_connection_gets_the_pushed_result(ws_url):
    first = await Client.connect(ws_url)
    second = await Client.connect(ws_url)
    ack = await first.ask({"type": "factorial", "number": 30000})
    answer = await second.ask({"type": "result", "task_id": ack["task_id"], "ref": "look"})
    if answer["type"] == "status":
        assert answer["status"] in ("queued", "started") and answer["ref"] == "look"
        while answer["type"] == "status":
            answer = await second.receive(30)
    assert answer["type"] == "success" and answer["ref"] == "look"
    assert answer["task_id"] == ack["task_id"] and answer["result"] == factorial_digits(30000)


@pytest.mark.gen_test(timeout=30)
async def test_lookup_of_a_finished_job_answers_at_once(ws_url):
    client = await Client.connect(ws_url)
    ack, _ = await client.factorial(7)
    again = await client.ask({"type": "result", "task_id": ack["task_id"]})
    assert again == {"type": "success", "task_id": ack["task_id"], "result": 5040, "digits": 4}


@pytest.mark.gen_test(timeout=30)
async def test_a_repeated_request_is_answered_from_the_stored_result(ws_url, redis_client):
    client = await Client.connect(ws_url)
    first_ack, _ = await client.factorial(321)
    ack, done = await client.factorial(321)
    assert ack["task_id"] == first_ack["task_id"] and ack["status"] == "finished"
    assert done["result"] == factorial_digits(321)
    assert jobs_waiting(redis_client, "soft") == 0


@pytest.mark.gen_test(timeout=30)
async def test_refs_are_echoed_on_every_answer(ws_url):
    client = await Client.connect(ws_url)
    ack = await client.ask({"type": "factorial", "number": 10, "ref": "ten"})
    done = await client.receive()
    assert ack["ref"] == "ten" and done["ref"] == "ten" and done["result"] == 3628800
    error = await client.ask({"type": "factorial", "number": -1, "ref": 99})
    assert error["ref"] == 99 and error["code"] == "invalid_number"


@pytest.mark.gen_test(timeout=30)
async def test_acknowledgements_come_in_request_order(ws_url):
    client = await Client.connect(ws_url)
    frames = []
    for i in range(40):
        frames.append({"type": "factorial", "number": 2000 + i, "ref": i} if i % 3 else "not json")
    for frame in frames:
        await client.send(frame)
    answers_to_requests = []
    while len(answers_to_requests) < len(frames):
        message = await client.receive(20)
        # Acknowledgements and request errors answer requests; successes come whenever.
        if message["type"] == "result" or (message["type"] == "error" and "task_id" not in message):
            answers_to_requests.append(message)
    for i, message in enumerate(answers_to_requests):
        if i % 3:
            assert message["type"] == "result" and message["ref"] == i
        else:
            assert message == {"type": "error", "code": "bad_json", "result": "JSON decode error"}


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "frame, code, text",
    [
        ("{not json", "bad_json", "JSON decode error"),
        ("[1]", "bad_json", "JSON decode error"),
        (b"\x00\x01binary", "bad_json", "JSON decode error"),
        ('{"type": "sum"}', "unknown_type", "Unknown task"),
        ('{"type": "factorial", "number": true}', "invalid_number", None),
        ('{"type": "factorial", "number": "5"}', "invalid_number", None),
        ('{"type": "factorial", "number": 1000001}', "number_too_large", None),
        ('{"type": "result"}', "invalid_task_id", None),
        ('{"type": "result", "task_id": "0123456789abcdef0123456789abcdef"}', "unknown_task_id", None),
        ('{"type": "result", "task_id": "rq:workers"}', "unknown_task_id", None),
    ],
)
async def test_bad_requests_get_their_error_and_the_connection_stays_usable(ws_url, redis_client, frame, code, text):
    client = await Client.connect(ws_url)
    error = await client.ask(frame)
    assert error["type"] == "error" and error["code"] == code
    if text:
        assert error["result"] == text
    assert jobs_waiting(redis_client, "soft") + jobs_waiting(redis_client, "hard") == 0
    _, done = await client.factorial(6)
    assert done["result"] == 720


@pytest.mark.gen_test(timeout=30)
async def test_frames_over_the_limit_close_with_1009(ws_url):
    client = await Client.connect(ws_url)
    await client.send('{"type": "factorial", "number": 5, "ref": "' + "x" * 70_000 + '"}')
    assert await client.connection.read_message() is None
    assert client.connection.close_code == 1009


@pytest.mark.gen_test(timeout=30)
async def test_invalid_utf8_fails_the_connection_with_1007(ws_url):
    client = await Client.connect(ws_url)
    # A text frame whose payload is not UTF-8: written below the client's API.
    client.connection.protocol._write_frame(True, 0x1, b'{"type": "\xff"}')
    assert await client.connection.read_message() is None
    assert client.connection.close_code == 1007


@pytest.mark.gen_test(timeout=60)
async def test_two_connections_wait_for_jobs_at_once(ws_url):
    a = await Client.connect(ws_url)
    b = await Client.connect(ws_url)
    ack_a = await a.ask({"type": "factorial", "number": 50_000})
    ack_b = await b.ask({"type": "factorial", "number": 60_000})
    done_a = await a.receive(30)
    while done_a["type"] == "status":
        done_a = await a.receive(30)
    done_b = await b.receive(30)
    while done_b["type"] == "status":
        done_b = await b.receive(30)
    assert done_a["task_id"] == ack_a["task_id"] and done_a["result"] == factorial_digits(50_000)
    assert done_b["task_id"] == ack_b["task_id"] and done_b["result"] == factorial_digits(60_000)


@pytest.mark.gen_test(timeout=30)
async def test_a_closed_connection_leaves_nothing_behind(app, ws_url):
    delivery = app.context.delivery
    client = await Client.connect(ws_url)
    await client.ask({"type": "factorial", "number": 200_000})
    await async_wait_until(lambda: delivery.waiting_jobs == 1, what="the wait to be registered")
    client.close()
    await async_wait_until(lambda: delivery.waiting_jobs == 0 and delivery.waiting_subscribers == 0,
                           what="the closed connection's waits to be dropped")
    gauge = app.context.metrics.open_connections._value.get()
    assert gauge == 0
