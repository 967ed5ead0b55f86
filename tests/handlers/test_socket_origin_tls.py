"""What stays private: cross-site WebSocket handshakes, the dashboard, Redis; and wss:// with TLS."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httpserver import HTTPServer

from server import make_app, ssl_context
from settings import Settings, SettingsError
from stack import dashboard
from stack.redis import server_command
from tests.conftest import ROOT
from tests.helpers import Client, free_port, jobs_waiting, wait_until

ALLOWED = "https://app.example.com"


@pytest.fixture
def settings(make_settings):
    return make_settings(allowed_origins=(ALLOWED,))


# --- origins ------------------------------------------------------------------------

def _own_origin(ws_url: str) -> str:
    return ws_url.replace("ws://", "http://").rsplit("/ws", 1)[0]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("origin", [None, "own", ALLOWED, "https://APP.example.com/"])
async def test_handshakes_from_the_own_and_allowed_origins_or_without_origin_are_served(ws_url, origin):
    headers = {} if origin is None else {"Origin": _own_origin(ws_url) if origin == "own" else origin}
    client = await Client.connect(HTTPRequest(ws_url, headers=headers))
    answer = await client.ask({"type": "result", "task_id": "0123456789abcdef0123456789abcdef"})
    assert answer["code"] == "unknown_task_id"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("origin", [
    "https://evil.example.com",
    "null",
    "http://localhost:1",  # the server's host on another port is another origin
    "own.evil.example",  # the server's own origin as a prefix of another host
    "https://app.example.com.evil.example",
    "file://",
])
async def test_handshakes_from_other_origins_are_refused_with_403(ws_url, origin):
    if origin == "own.evil.example":
        origin = _own_origin(ws_url) + ".evil.example"
    with pytest.raises(HTTPClientError) as refused:
        await Client.connect(HTTPRequest(ws_url, headers={"Origin": origin}))
    assert refused.value.code == 403


# --- origins of state-changing HTTP requests --------------------------------------

@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("origin", ["https://evil.example.com", "null", "http://localhost:1", "own.evil.example"])
async def test_cross_site_posts_and_deletes_are_refused_with_403_and_start_nothing(
        http_client, base_url, redis_client, origin):
    if origin == "own.evil.example":
        origin = base_url + ".evil.example"
    # What a form or fetch() of another site can send without a preflight.
    post = await http_client.fetch(base_url + "/api/factorial", method="POST", body='{"number": 5}', raise_error=False,
                                   headers={"Origin": origin, "Content-Type": "text/plain"})
    assert post.code == 403 and post.headers["Content-Type"] == "application/json"
    body = json.loads(post.body)
    assert body["type"] == "error" and body["code"] == "bad_request" and "ALLOWED_ORIGINS" in body["result"]
    assert jobs_waiting(redis_client, "soft") == 0 and not redis_client.keys("rq:job:*")

    accepted = json.loads((await http_client.fetch(base_url + "/api/factorial", method="POST",
                                                   body='{"number": 6}')).body)
    cancel = await http_client.fetch(f"{base_url}/api/tasks/{accepted['task_id']}", method="DELETE",
                                     headers={"Origin": origin}, raise_error=False)
    assert cancel.code == 403 and json.loads(cancel.body)["code"] == "bad_request"
    # A lookup changes nothing, and another site cannot read its answer (no CORS header).
    lookup = await http_client.fetch(f"{base_url}/api/tasks/{accepted['task_id']}", headers={"Origin": origin})
    assert json.loads(lookup.body)["type"] == "status" and "Access-Control-Allow-Origin" not in lookup.headers


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("origin", [None, "own", ALLOWED, "https://APP.example.com/"])
async def test_posts_from_the_own_and_allowed_origins_or_without_origin_are_served(http_client, base_url, origin):
    headers = {} if origin is None else {"Origin": base_url if origin == "own" else origin}
    post = await http_client.fetch(base_url + "/api/factorial", method="POST", body='{"number": 5}', headers=headers)
    assert post.code == 202 and json.loads(post.body)["type"] == "result"


# --- TLS ----------------------------------------------------------------------------

@pytest.fixture
def certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.mark.gen_test(timeout=30)
async def test_wss_works_with_the_configured_certificate(make_settings, worker, certificate, io_loop):
    cert, key = certificate
    settings = make_settings(tls_certfile=str(cert), tls_keyfile=str(key))
    app = make_app(settings)
    server = HTTPServer(app, ssl_options=ssl_context(settings))
    port = free_port()
    server.listen(port, "127.0.0.1")
    app.context.delivery.start()
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        client = await Client.connect(HTTPRequest(f"wss://localhost:{port}/ws", ssl_options=trusting))
        _, done = await client.factorial(5)
        assert done["result"] == 120
        client.close()
        # A client that does not trust the certificate gets no connection.
        with pytest.raises(ssl.SSLError):
            await Client.connect(HTTPRequest(f"wss://localhost:{port}/ws", ssl_options=ssl.create_default_context()))
    finally:
        server.stop()
        app.context.delivery.stop()
        app.context.jobs.close()


# --- the dashboard and Redis stay private ------------------------------------------

@pytest.mark.parametrize("bind", ["0.0.0.0", "192.0.2.10", "::"])
def test_the_dashboard_refuses_a_public_bind_without_a_login(bind):
    with pytest.raises(SystemExit) as refused:
        dashboard.command(Settings(rq_dashboard_bind=bind))
    assert "refusing" in str(refused.value)


@pytest.mark.parametrize("half", [{"RQ_DASHBOARD_USERNAME": "admin"}, {"RQ_DASHBOARD_PASSWORD": "secret"}])
def test_half_a_dashboard_login_is_a_start_up_error(half):
    with pytest.raises(SettingsError, match="RQ_DASHBOARD_USERNAME and RQ_DASHBOARD_PASSWORD"):
        Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0", "RQ_DASHBOARD_BIND": "192.0.2.10", **half})


def test_the_dashboard_binds_loopback_by_default_and_keeps_credentials_off_the_command_line():
    assert dashboard.command(Settings())[1:3] == ["--bind", "127.0.0.1"]
    login = Settings(rq_dashboard_bind="0.0.0.0", rq_dashboard_username="admin", rq_dashboard_password="s3cret")
    argv = dashboard.command(login)
    assert argv[1:3] == ["--bind", "0.0.0.0"] and "s3cret" not in " ".join(argv)
    assert dashboard.login(login) == {"RQ_DASHBOARD_USERNAME": "admin", "RQ_DASHBOARD_PASSWORD": "s3cret"}
    assert dashboard.login(Settings()) == {}


def test_a_real_dashboard_start_on_a_public_address_is_refused(redis_url):
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "RQ_DASHBOARD_BIND": "0.0.0.0", "RQ_DASHBOARD_PORT": str(port)}
    env.pop("RQ_DASHBOARD_USERNAME", None)
    env.pop("RQ_DASHBOARD_PASSWORD", None)
    done = subprocess.run([sys.executable, "-m", "stack.dashboard"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode != 0 and "refusing to serve rq-dashboard on 0.0.0.0" in done.stderr
    assert not _accepts("127.0.0.1", port)


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _other_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent for UDP
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_the_projects_redis_listens_on_loopback_only(redis_server):
    assert server_command(6379, ROOT / "var")[1:3] == ["--bind", "127.0.0.1"]
    assert _accepts("127.0.0.1", redis_server.port)
    other = _other_address()
    if other is None:
        pytest.skip("this machine has no address but loopback")
    assert not _accepts(other, redis_server.port)


@pytest.mark.slow
def test_a_real_dashboard_listens_on_loopback_only(redis_url):
    other = _other_address()
    if other is None:
        pytest.skip("this machine has no address but loopback")
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "RQ_DASHBOARD_PORT": str(port)}
    env.pop("RQ_DASHBOARD_BIND", None)
    process = subprocess.Popen([sys.executable, "-m", "stack.dashboard"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _accepts("127.0.0.1", port) or process.poll() is not None, timeout=30,
                   what="rq-dashboard to listen")
        assert process.poll() is None
        assert not _accepts(other, port)
    finally:
        process.kill()
        process.wait()
