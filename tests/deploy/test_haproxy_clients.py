"""Behind deploy/haproxy.cfg, each client is itself: the proxy's X-Forwarded-For names it to the server."""

from __future__ import annotations

import json

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest

from tests.deploy.haproxy import HAProxy, haproxy_binary
from tests.helpers import Client, free_port

pytestmark = pytest.mark.skipif(haproxy_binary() is None, reason="needs haproxy (apt-get install haproxy)")


async def through(url: str, source: str, **headers):
    try:
        return await Client.connect(HTTPRequest(url, network_interface=source,
                                                headers={k.replace("_", "-"): v for k, v in headers.items()}))
    except HTTPClientError as err:
        return err


@pytest.mark.gen_test(timeout=90)
async def test_clients_behind_haproxy_are_counted_apart_and_cannot_forge_another_address(make_server, make_worker,
                                                                                          tmp_path):
    server = make_server(client_max_connections=1, trusted_proxies="127.0.0.1")
    make_worker()  # /healthz wants a worker, or HAProxy sends nobody
    port = free_port()
    proxy = HAProxy(tmp_path, f"127.0.0.1:{port}", [f"127.0.0.1:{server.port}"] * 2).start()
    held = []
    try:
        proxy.wait_state("web-1", "UP")
        url = f"ws://127.0.0.1:{port}/ws"
        held += [await through(url, "127.0.0.2"), await through(url, "127.0.0.3")]
        assert all(isinstance(c, Client) for c in held), held
        assert (await held[0].ask({"type": "factorial", "number": 5}))["type"] == "result"
        # Each has its one connection; a header the client wrote itself does not make it someone else.
        for source, forged in (("127.0.0.2", {}), ("127.0.0.3", {"X_Forwarded_For": "198.18.0.99"})):
            refused = await through(url, source, **forged)
            assert isinstance(refused, HTTPClientError) and refused.code == 429, refused
            assert json.loads(refused.response.body)["code"] == "rate_limited"
    finally:
        for client in held:
            if isinstance(client, Client):
                client.close()
        proxy.stop()
