"""Every HTTP error is the protocol's JSON error message; unknown ids read the same on HTTP and on /ws."""

import json
import logging

import pytest

from tests.helpers import Client


async def fetch(http_client, base_url, path, method="GET", body=None):
    return await http_client.fetch(base_url + path, method=method, body=body, raise_error=False,
                                   allow_nonstandard_methods=True)


def protocol_error(response) -> dict:
    assert response.headers["Content-Type"] == "application/json", response.body[:200]
    message = json.loads(response.body)
    assert message["type"] == "error" and isinstance(message["result"], str) and message["result"]
    return message


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("method, path, body, status, code", [
    ("GET", "/no/such/page", None, 404, "not_found"),
    ("GET", "/static/no-such-file.js", None, 404, "not_found"),
    ("GET", "/api/factorial", None, 405, "method_not_allowed"),
    ("DELETE", "/api/factorial", None, 405, "method_not_allowed"),
    ("POST", "/api/tasks/0123456789abcdef0123456789abcdef", b"{}", 405, "method_not_allowed"),
    ("PUT", "/healthz", b"", 405, "method_not_allowed"),
    ("POST", "/api/factorial", b'{"number": 5, "pad": "' + b"x" * 70000 + b'"}', 413, "too_large"),
])
async def test_http_errors_are_json_with_the_protocols_code_and_result(
        http_client, base_url, redis_url, method, path, body, status, code):
    response = await fetch(http_client, base_url, path, method, body)
    assert response.code == status
    assert protocol_error(response)["code"] == code


@pytest.mark.gen_test(timeout=30)
async def test_a_handler_that_fails_answers_500_internal_error_without_its_traceback(
        http_client, base_url, app, redis_url):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug, with a secret in its message")

    app.context.jobs.request_lookup = broken
    response = await fetch(http_client, base_url, "/api/tasks/0123456789abcdef0123456789abcdef")
    assert response.code == 500
    error = protocol_error(response)
    assert error["code"] == "internal_error" and b"secret" not in response.body


@pytest.mark.gen_test(timeout=30)
async def test_a_missing_file_is_logged_at_info_not_as_a_warning(http_client, base_url, redis_url, caplog):
    with caplog.at_level(logging.INFO, logger="tornado.access"):
        response = await fetch(http_client, base_url, "/static/no-such-file.js")
    assert response.code == 404
    logged = [r for r in caplog.records if r.name == "tornado.access" and "no-such-file.js" in r.getMessage()]
    assert [r.levelno for r in logged] == [logging.INFO]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("task_id", ["0123456789abcdef0123456789abcdef", "not-a-task-id", "*", "", "a/b"])
async def test_an_unknown_id_is_the_same_unknown_task_id_on_http_and_on_the_websocket(
        http_client, base_url, ws_url, redis_url, task_id):
    response = await fetch(http_client, base_url, f"/api/tasks/{task_id}")
    assert response.code == 404
    over_http = protocol_error(response)

    client = await Client.connect(ws_url)
    over_ws = await client.ask({"type": "result", "task_id": task_id})
    client.close()
    assert over_ws == over_http
    assert over_http["code"] == "unknown_task_id" and over_http["task_id"] == task_id


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("headers, status, text", [
    ({}, 400, 'Can "Upgrade" only to "WebSocket".'),
    ({"Upgrade": "websocket", "Connection": "keep-alive"}, 400, '"Connection" must be "Upgrade".'),
    ({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": "https://elsewhere.example"},
     403, "Cross origin websockets not allowed"),
    ({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "8"}, 426, "upgrade required"),
])
async def test_a_refused_websocket_handshake_is_json_too(http_client, base_url, redis_url, headers, status, text):
    response = await http_client.fetch(base_url + "/ws", headers=headers, raise_error=False)
    assert response.code == status
    assert protocol_error(response) == {"type": "error", "code": "bad_request", "result": text}
