"""Behind a real HAProxy running deploy/haproxy.cfg: its log holds no API key, a client cannot
forge its identity through either REAL_IP_HEADER rule, and what HAProxy answers itself is the
service's error message."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from tests.conftest import ROOT
from tests.deploy.haproxy import HAProxy, haproxy_binary
from tests.helpers import Client, async_wait_until, free_port

pytestmark = pytest.mark.skipif(haproxy_binary() is None, reason="needs haproxy (apt-get install haproxy)")

SECRET = "s3cret-Key/with+odd=chars"


@pytest.fixture
def behind_haproxy(make_server, make_worker, tmp_path):
    """Start one server (with ``env``) behind HAProxy: yields a function returning (server, proxy, port).
    The proxies stop here, then make_server and make_worker stop the server and the worker."""
    proxies = []

    def start(**env):
        server = make_server(**env)
        port = free_port()
        proxy = HAProxy(tmp_path, f"127.0.0.1:{port}", [f"127.0.0.1:{server.port}"] * 2)
        proxies.append(proxy.start())
        proxy.wait_state("web-1", "UP")
        return server, proxy, port

    make_worker()  # /healthz wants a worker, or HAProxy sends nobody
    yield start
    for proxy in reversed(proxies):
        proxy.stop()


@pytest.mark.gen_test(timeout=90)
async def test_haproxys_log_names_paths_and_never_a_key(behind_haproxy):
    _, proxy, port = behind_haproxy(api_keys=f"alice:{SECRET}")
    log = proxy.folder / "haproxy.log"
    base, key = f"http://127.0.0.1:{port}", quote(SECRET, safe="")
    http = AsyncHTTPClient()
    assert (await http.fetch(f"{base}/?api_key={key}")).code == 200
    posted = await http.fetch(f"{base}/api/factorial?x=1&api_key={key}", method="POST", body='{"number": 5}')
    assert posted.code == 202
    disguised = await http.fetch(f"{base}/api/tasks/x?api%5Fkey={key}", raise_error=False)
    assert disguised.code == 401
    client = await Client.connect(f"ws://127.0.0.1:{port}/ws?api_key={key}")
    assert (await client.ask({"type": "factorial", "number": 5}))["type"] == "result"
    client.close()  # HAProxy logs a WebSocket when it ends

    wanted = ['"GET" "/"\n', '"POST" "/api/factorial"', '"GET" "/api/tasks/x"', '"GET" "/ws"']
    await async_wait_until(lambda: all(w in log.read_text() for w in wanted), timeout=10,
                           what="HAProxy to log the four requests")
    text = log.read_text()
    print(text)
    assert "s3cret" not in text and quote(SECRET, safe="") not in text and "api" not in text.replace("/api/", "")
    assert " 202 " in text and " 401 " in text and " 101 " in text


async def handshake(port: int, source: str, **headers):
    """A connected Client, or the HTTP error its handshake got, from ``source`` through HAProxy."""
    try:
        return await Client.connect(HTTPRequest(f"ws://127.0.0.1:{port}/ws", network_interface=source,
                                                headers={k.replace("_", "-"): v for k, v in headers.items()}))
    except HTTPClientError as err:
        return err


def refused(outcome) -> bool:
    return (isinstance(outcome, HTTPClientError) and outcome.code == 429
            and json.loads(outcome.response.body)["code"] == "rate_limited")


@pytest.mark.gen_test(timeout=90)
@pytest.mark.parametrize("real_ip_header", ["X-Forwarded-For", "X-Real-IP"])
async def test_forged_headers_through_haproxy_do_not_change_who_a_client_is(behind_haproxy, real_ip_header):
    _, _, port = behind_haproxy(client_max_connections=1, trusted_proxies="127.0.0.1", real_ip_header=real_ip_header)
    held = []
    try:
        held.append(await handshake(port, "127.0.0.2"))
        assert isinstance(held[0], Client), held
        # 127.0.0.2 holds its one place, whatever it writes about itself.
        for forged in ({}, {"X_Forwarded_For": "198.18.0.99"}, {"X_Real_IP": "198.18.0.98"},
                       {"X_Forwarded_For": "198.18.0.99", "X_Real_IP": "198.18.0.98"}):
            outcome = await handshake(port, "127.0.0.2", **forged)
            assert refused(outcome), (forged, outcome)
        # 127.0.0.3 posing as 127.0.0.2, in either header, is still itself: it gets its own place.
        held.append(await handshake(port, "127.0.0.3", X_Forwarded_For="127.0.0.2", X_Real_IP="127.0.0.2"))
        assert isinstance(held[-1], Client), held[-1]
    finally:
        for client in held:
            if isinstance(client, Client):
                client.close()


async def _broken_backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A server that passes HAProxy's health check and breaks off every other request: HAProxy's 502."""
    request_line = await reader.readline()
    if request_line.startswith(b"GET /healthz "):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()
    writer.close()


def _balancer_error(response, status: int) -> None:
    assert response.code == status, response
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Retry-After"] == "1"
    assert json.loads(response.body)["code"] == "unavailable"


@pytest.mark.gen_test(timeout=60)
async def test_haproxys_own_answers_are_the_services_error_message(tmp_path):
    """With no server up (503) and with one that breaks requests off (502), a client through
    deploy/haproxy.cfg gets the service's JSON error, which the contract fixture also checks."""
    down = HAProxy(tmp_path, f"127.0.0.1:{free_port()}", [f"127.0.0.1:{free_port()}"] * 2).start()
    backend = await asyncio.start_server(_broken_backend, "127.0.0.1", 0)
    broken = None
    try:
        down.wait_state("web-1", "DOWN")
        down.wait_state("web-2", "DOWN")
        http = AsyncHTTPClient()
        for path in ("/healthz", "/api/tasks/" + "0" * 32, "/ws"):
            _balancer_error(await http.fetch(f"http://{down.listen}{path}", raise_error=False), 503)
        port = backend.sockets[0].getsockname()[1]
        folder = tmp_path / "broken"
        folder.mkdir()
        broken = HAProxy(folder, f"127.0.0.1:{free_port()}", [f"127.0.0.1:{port}"] * 2).start()
        broken.wait_state("web-1", "UP")
        _balancer_error(await http.fetch(f"http://{broken.listen}/api/tasks/{'0' * 32}", raise_error=False), 502)
    finally:
        backend.close()
        down.stop()
        if broken:
            broken.stop()


@pytest.mark.parametrize("status", [502, 503, 504])
def test_each_error_file_is_one_whole_http_response_of_the_error_shape(status):
    """HAProxy sends an error file as it is: a wrong Content-Length would hang or cut the client."""
    raw = (ROOT / "deploy" / "haproxy-errors" / f"{status}.http").read_bytes()
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} ")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert int(fields["Content-Length"]) == len(body)
    assert fields["Content-Type"] == "application/json" and fields["Retry-After"].isdigit()
    message = json.loads(body)
    assert message["type"] == "error" and message["code"] == "unavailable" and message["result"]
