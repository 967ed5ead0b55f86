"""The HTTP API end to end: real Redis, a real rq worker, real HTTP requests."""

import dataclasses
import json

import pytest
from redis import Redis

from jobs import keys
from jobs.factorial import factorial_digits
from tests.helpers import async_wait_until, free_port, jobs_waiting


async def post(http_client, base_url, body, raise_error=False):
    return await http_client.fetch(
        base_url + "/api/factorial", method="POST", raise_error=raise_error,
        body=body if isinstance(body, (str, bytes)) else json.dumps(body),
        headers={"Content-Type": "application/json"},
    )


async def get_task(http_client, base_url, task_id):
    return await http_client.fetch(base_url + f"/api/tasks/{task_id}", raise_error=False)


async def final_answer(http_client, base_url, task_id, timeout=30):
    """GET the task until it is no longer a status, within ``timeout`` seconds."""

    async def ended():
        response = await get_task(http_client, base_url, task_id)
        return response if json.loads(response.body)["type"] != "status" else None

    return await async_wait_until(ended, timeout=timeout, interval=0.05, what=f"task {task_id} to end")


@pytest.mark.gen_test(timeout=30)
async def test_post_answers_202_with_the_acknowledgement_then_get_answers_the_stored_success(
        http_client, base_url, worker, redis_client):
    response = await post(http_client, base_url, {"number": 5, "ref": "r1"})
    assert response.code == 202
    ack = json.loads(response.body)
    assert ack["type"] == "result" and ack["queue"] == "soft" and ack["ref"] == "r1"
    assert ack["status"] in ("queued", "started", "finished")
    assert response.headers["Location"] == f"/api/tasks/{ack['task_id']}"

    done = await final_answer(http_client, base_url, ack["task_id"])
    assert done.code == 200 and done.headers["Content-Type"] == "application/json"
    # The stored payload, forwarded byte for byte.
    assert done.body == redis_client.get(keys.payload(ack["task_id"]))
    assert json.loads(done.body) == {"type": "success", "task_id": ack["task_id"], "result": 120, "digits": 3}


@pytest.mark.gen_test(timeout=60)
async def test_a_big_result_arrives_exact_as_a_string_of_digits(http_client, base_url, worker):
    ack = json.loads((await post(http_client, base_url, {"number": 20000})).body)
    assert ack["queue"] == "hard"
    done = json.loads((await final_answer(http_client, base_url, ack["task_id"], timeout=50)).body)
    expected = factorial_digits(20000)
    assert done["result"] == expected and done["digits"] == len(expected)


@pytest.mark.gen_test(timeout=30)
async def test_get_of_a_queued_job_answers_its_status(http_client, base_url, redis_url):
    # No worker: the job stays queued.
    ack = json.loads((await post(http_client, base_url, {"number": 6})).body)
    response = await get_task(http_client, base_url, ack["task_id"])
    assert response.code == 200
    assert json.loads(response.body) == {"type": "status", "task_id": ack["task_id"], "status": "queued"}


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("body, code", [
    ({"number": -1}, "invalid_number"),
    ({"number": True}, "invalid_number"),
    ({"number": "5"}, "invalid_number"),
    ({"number": 5.0}, "invalid_number"),
    ({}, "invalid_number"),
    ({"number": 10**7}, "number_too_large"),
    ('{"number": 1' + "0" * 5000 + "}", "number_too_large"),
    ({"number": 5, "ref": True}, "invalid_ref"),
    ({"type": "result", "number": 5}, "unknown_type"),
    ("not json", "bad_json"),
    ("[5]", "bad_json"),
    ('{"number": 5', "bad_json"),
    (b"\xff\xfe", "bad_json"),
])
async def test_bad_input_answers_400_with_the_protocol_error(http_client, base_url, redis_client, body, code):
    response = await post(http_client, base_url, body)
    assert response.code == 400
    error = json.loads(response.body)
    assert error["type"] == "error" and error["code"] == code
    assert jobs_waiting(redis_client, "soft") == 0 and jobs_waiting(redis_client, "hard") == 0


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("task_id", ["0123456789abcdef0123456789abcdef", "not-a-task-id", "*"])
async def test_an_unknown_task_answers_404_unknown_task_id(http_client, base_url, redis_url, task_id):
    response = await get_task(http_client, base_url, task_id)
    assert response.code == 404
    error = json.loads(response.body)
    assert error["type"] == "error" and error["code"] == "unknown_task_id"


@pytest.mark.gen_test(timeout=30)
async def test_a_full_queue_answers_503_busy(http_client, base_url, app, redis_url):
    store = app.context.jobs.store
    store.settings = dataclasses.replace(store.settings, max_queue_length=0)
    response = await post(http_client, base_url, {"number": 5, "ref": 9})
    assert response.code == 503
    assert json.loads(response.body)["code"] == "busy" and json.loads(response.body)["ref"] == 9


@pytest.mark.gen_test(timeout=30)
async def test_an_unreachable_redis_answers_503_unavailable(http_client, base_url, app):
    app.context.jobs.store.redis = _dead_redis()
    response = await post(http_client, base_url, {"number": 5})
    assert response.code == 503 and json.loads(response.body)["code"] == "unavailable"
    response = await get_task(http_client, base_url, "0123456789abcdef0123456789abcdef")
    assert response.code == 503 and json.loads(response.body)["code"] == "unavailable"


def _dead_redis():
    # A port nothing listens on: connections are refused at once.
    return Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
