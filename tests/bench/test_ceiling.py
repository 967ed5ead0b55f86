"""The no-queue ceiling answers the service's frames, exactly, from memory."""

import json

import pytest
from tornado.websocket import websocket_connect

from bench.ceiling import Answers, make_app
from jobs.factorial import factorial_digits
from settings import Settings


@pytest.fixture
def app():
    # Overrides the service's app: pytest-tornado's http_server serves this one.
    return make_app(Answers(Settings(soft_max_number=10)))


@pytest.fixture
def ws_url(http_server, base_url):
    return base_url.replace("http://", "ws://") + "/ws"


async def _ask(connection, message: dict) -> dict:
    await connection.write_message(json.dumps(message))
    return json.loads(await connection.read_message())


@pytest.mark.gen_test(timeout=10)
async def test_a_factorial_gets_the_services_two_frames(ws_url):
    connection = await websocket_connect(ws_url)
    ack = await _ask(connection, {"type": "factorial", "number": 5, "ref": 7})
    assert ack == {"type": "result", "task_id": ack["task_id"], "status": "queued", "queue": "soft", "ref": 7}
    done = json.loads(await connection.read_message())
    assert done == {"type": "success", "task_id": ack["task_id"], "result": 120, "digits": 3, "ref": 7}


@pytest.mark.gen_test(timeout=10)
async def test_one_number_is_one_task_whose_stored_answer_is_sent_again(ws_url):
    first, second = await websocket_connect(ws_url), await websocket_connect(ws_url)
    ack_one = await _ask(first, {"type": "factorial", "number": 30})
    ack_two = await _ask(second, {"type": "factorial", "number": 30})
    assert ack_one["task_id"] == ack_two["task_id"] and ack_one["queue"] == "hard"
    one, two = await first.read_message(), await second.read_message()
    assert one == two and json.loads(one)["result"] == factorial_digits(30)


@pytest.mark.gen_test(timeout=10)
async def test_bad_frames_get_the_protocols_errors(ws_url):
    connection = await websocket_connect(ws_url)
    assert (await _ask(connection, {"type": "factorial", "number": -1}))["code"] == "invalid_number"
    await connection.write_message("{")
    assert json.loads(await connection.read_message())["code"] == "bad_json"
    lookup = await _ask(connection, {"type": "result", "task_id": "0" * 32})
    assert lookup["code"] == "unknown_task_id"
