"""Who a request comes from: peer addresses, trusted proxies' headers, API keys; and that keys stay out of logs."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
import sys
from urllib.parse import quote

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from handlers.identity import ClientIdentifier, client_of, without_api_key
from protocol import ErrorCode, ProtocolError
from settings import ApiKey, Settings, SettingsError
from tests.conftest import ROOT
from tests.helpers import Client, free_port

KEY = "k3y-Of-alice/with+odd=chars/"


def test_ipv4_peer_is_its_own_client():
    assert client_of("198.18.0.7") == "198.18.0.7"
    assert client_of("198.18.0.7") != client_of("198.18.0.8")


def test_ipv6_peers_in_one_64_are_one_client():
    assert client_of("2001:db8:1:2::1") == client_of("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_of("2001:db8:1:3::1") != client_of("2001:db8:1:2::1")


def test_ipv4_mapped_ipv6_is_the_ipv4_client():
    assert client_of("::ffff:198.18.0.7") == "198.18.0.7"


def test_unparseable_peer_keeps_its_text():
    assert client_of("unix-socket") == "unix-socket"
    assert client_of("") == "unknown"


# --- proxies -------------------------------------------------------------------------

def _request(peer: str, uri: str, headers: dict) -> HTTPServerRequest:
    req = HTTPServerRequest(start_line=RequestStartLine("GET", uri, "HTTP/1.1"), headers=HTTPHeaders(Host="svc"))
    for name, value in headers.items():
        for one in value if isinstance(value, list) else [value]:
            req.headers.add(name.replace("_", "-"), one)
    req.remote_ip = peer
    return req


TRUSTING = ClientIdentifier(Settings(trusted_proxies=("127.0.0.1", "198.18.5.0/24")))
REAL_IP = ClientIdentifier(Settings(trusted_proxies=("127.0.0.1", "198.18.5.0/24"), real_ip_header="X-Real-IP"))


@pytest.mark.parametrize("peer, headers, address", [
    # Not a trusted proxy: its headers are ignored, whatever they say.
    ("198.18.0.9", {"X-Forwarded-For": "198.18.7.7"}, "198.18.0.9"),
    ("198.18.0.9", {"X-Real-IP": "198.18.7.7"}, "198.18.0.9"),
    # A trusted proxy: the right-most address that is not a proxy.
    ("127.0.0.1", {"X-Forwarded-For": "198.18.7.7"}, "198.18.7.7"),
    ("127.0.0.1", {"X-Forwarded-For": "203.0.113.66, 198.18.7.7, 198.18.5.3"}, "198.18.7.7"),
    ("127.0.0.1", {"X-Forwarded-For": ["203.0.113.66", "198.18.7.7"]}, "198.18.7.7"),
    ("127.0.0.1", {"X-Forwarded-For": "198.18.7.7:4711"}, "198.18.7.7"),
    ("127.0.0.1", {"X-Forwarded-For": "[2001:db8::5]:443"}, "2001:db8::5"),
    # Garbage where the client should be: the proxy that passed it on.
    ("127.0.0.1", {"X-Forwarded-For": "198.18.7.7, not-an-address, 198.18.5.3"}, "198.18.5.3"),
    ("127.0.0.1", {"X-Forwarded-For": "198.18.5.3, 198.18.5.4"}, "198.18.5.3"),
    ("127.0.0.1", {}, "127.0.0.1"),
    ("::ffff:127.0.0.1", {"X-Forwarded-For": "198.18.7.7"}, "198.18.7.7"),
    # X-Real-IP is not this server's header: a client's own never wins, with or without the proxy's list.
    ("127.0.0.1", {"X-Real-IP": "198.18.7.8"}, "127.0.0.1"),
    ("127.0.0.1", {"X-Real-IP": "198.18.66.6", "X-Forwarded-For": "198.18.7.7"}, "198.18.7.7"),
])
def test_forwarded_addresses_are_believed_only_from_trusted_proxies(peer, headers, address):
    identity = TRUSTING.identify(_request(peer, "/ws", headers))
    assert identity.address == address and identity.peer == peer
    assert identity.client == client_of(address)


@pytest.mark.parametrize("peer, headers, address", [
    ("198.18.0.9", {"X-Real-IP": "198.18.7.7"}, "198.18.0.9"),
    ("127.0.0.1", {"X-Real-IP": "198.18.7.8"}, "198.18.7.8"),
    ("127.0.0.1", {"X-Real-IP": "[2001:db8::5]:443"}, "2001:db8::5"),
    # A forged X-Forwarded-For, even one the proxy appended to, never wins over X-Real-IP.
    ("127.0.0.1", {"X-Forwarded-For": "198.18.66.6, 198.18.7.9", "X-Real-IP": "198.18.7.8"}, "198.18.7.8"),
    ("127.0.0.1", {"X-Forwarded-For": "198.18.66.6"}, "127.0.0.1"),
    # A proxy that added its header after the client's forged one: the last is the proxy's.
    ("127.0.0.1", {"X-Real-IP": ["198.18.66.6", "198.18.7.8"]}, "198.18.7.8"),
    ("127.0.0.1", {"X-Real-IP": "nonsense"}, "127.0.0.1"),
])
def test_with_real_ip_header_x_real_ip_only_that_header_is_believed(peer, headers, address):
    assert REAL_IP.identify(_request(peer, "/ws", headers)).address == address


def test_ipv6_clients_are_grouped_by_the_configured_prefix():
    wide = ClientIdentifier(Settings(client_ipv6_prefix=48))
    assert wide.identify(_request("2001:db8:1:2::1", "/ws", {})).client == "2001:db8:1::/48"
    assert wide.identify(_request("2001:db8:1:3::1", "/ws", {})).client == "2001:db8:1::/48"
    exact = ClientIdentifier(Settings(client_ipv6_prefix=128))
    assert exact.identify(_request("2001:db8:1:2::1", "/ws", {})).client == "2001:db8:1:2::1/128"
    assert ClientIdentifier(Settings()).identify(_request("2001:db8:1:2::1", "/ws", {})).client == "2001:db8:1:2::/64"


def test_without_trusted_proxies_nobody_is_believed():
    identity = ClientIdentifier(Settings()).identify(_request("127.0.0.1", "/ws", {"X-Forwarded-For": "198.18.7.7"}))
    assert identity.client == "127.0.0.1"


# --- keys ----------------------------------------------------------------------------

KEYED = ClientIdentifier(Settings(api_keys=(f"alice:{KEY}", "bob:other-key")))
REQUIRED = ClientIdentifier(Settings(api_keys=(f"alice:{KEY}",), api_keys_required=True))


@pytest.mark.parametrize("uri, headers", [
    ("/ws", {"X-API-Key": KEY}),
    ("/ws", {"Authorization": f"Bearer {KEY}"}),
    ("/ws?api_key=" + quote(KEY, safe=""), {}),
])
def test_a_key_names_the_client_wherever_it_connects_from(uri, headers):
    req = _request("198.18.0.9", uri, headers)
    assert KEYED.identify(req).client == "key:alice"
    assert KEY not in req.uri and "api_key" not in req.query_arguments


def test_a_wrong_key_is_refused_even_when_keys_are_optional():
    with pytest.raises(ProtocolError) as caught:
        KEYED.identify(_request("198.18.0.9", "/ws", {"X-API-Key": "guess"}))
    assert caught.value.code == ErrorCode.UNAUTHORIZED and "guess" not in caught.value.text


def test_without_a_key_the_address_is_the_client_unless_keys_are_required():
    assert KEYED.identify(_request("198.18.0.9", "/ws", {})).client == "198.18.0.9"
    with pytest.raises(ProtocolError, match="API key is required"):
        REQUIRED.identify(_request("198.18.0.9", "/ws", {}))


def test_the_key_parameter_is_cut_from_uris_and_nothing_else():
    assert without_api_key("/ws?api_key=s3cret&x=1") == "/ws?x=1"
    assert without_api_key("/ws?x=1") == "/ws?x=1"
    assert without_api_key("/ws?a=%20b&api%5Fkey=s3cret&api_key=x&api_keys=y") == "/ws?a=%20b&api_keys=y"


@pytest.mark.parametrize("uri", ["/ws?api%5Fkey=" + quote(KEY, safe=""), "/ws?api%5fkey=x&api_key=" + KEY,
                                 "/ws?api_key=" + KEY + "&ap%69_key=x"])
def test_a_key_parameter_whose_name_is_only_encoded_api_key_is_refused_and_cut(uri):
    for identifier in (KEYED, ClientIdentifier(Settings())):
        req = _request("198.18.0.9", uri, {})
        with pytest.raises(ProtocolError, match="spelled exactly") as caught:
            identifier.identify(req)
        assert caught.value.code == ErrorCode.UNAUTHORIZED
        assert "key" not in req.uri and "api_key" not in req.query_arguments and KEY not in caught.value.text


def test_other_spellings_of_the_name_are_no_key_parameter():
    req = _request("198.18.0.9", "/ws?API_KEY=abc&api-key=def", {})
    assert KEYED.identify(req).client == "198.18.0.9" and req.uri == "/ws?API_KEY=abc&api-key=def"


def test_settings_never_show_a_key_in_their_repr():
    shown = repr(Settings(api_keys=(f"alice:{KEY}",), redis_url="redis://:pw-secret@127.0.0.1:6379/0"))
    assert KEY not in shown and "k3y" not in shown and "pw-secret" not in shown and "trusted_proxies" in shown


@pytest.mark.parametrize("env, variable", [
    ({"TRUSTED_PROXIES": "127.0.0.1, proxy.example"}, "TRUSTED_PROXIES"),
    ({"REAL_IP_HEADER": "X Real IP"}, "REAL_IP_HEADER"),
    ({"CLIENT_IPV6_PREFIX": "129"}, "CLIENT_IPV6_PREFIX"),
    ({"CLIENT_IPV6_PREFIX": "0"}, "CLIENT_IPV6_PREFIX"),
    ({"API_KEYS": "alice:ok,nameless"}, "API_KEYS"),
    ({"API_KEYS_REQUIRED": "true"}, "API_KEYS_REQUIRED"),
])
def test_bad_identity_settings_name_the_variable_and_never_a_key(env, variable):
    with pytest.raises(SettingsError, match=variable) as caught:
        Settings.from_env(env)
    assert "nameless" not in str(caught.value)


@pytest.mark.parametrize("entries, bad", [
    ("10.0.0.5/8", "10.0.0.5/8"),
    ("127.0.0.1, 198.18.5.1/24", "198.18.5.1/24"),
    ("2001:db8::1/64", "2001:db8::1/64"),
])
def test_trusted_proxies_with_host_bits_set_are_refused_at_start_naming_the_entry(entries, bad):
    with pytest.raises(SettingsError, match="TRUSTED_PROXIES") as caught:
        Settings.from_env({"TRUSTED_PROXIES": entries})
    assert repr(bad) in str(caught.value) and "host bits set" in str(caught.value)


def test_a_bad_trusted_proxies_entry_stops_the_real_server_at_start(redis_url):
    done = subprocess.run([sys.executable, "server.py"], cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "REDIS_URL": redis_url, "SERVER_PORT": str(free_port()),
                               "TRUSTED_PROXIES": "127.0.0.1,10.0.0.5/8"})
    assert done.returncode != 0 and "TRUSTED_PROXIES: '10.0.0.5/8'" in done.stderr


def test_keys_keep_every_character_of_the_environment():
    s = Settings.from_env({"API_KEYS": f"alice:{KEY}, bob:x", "TRUSTED_PROXIES": "10.0.0.0/8"})
    assert s.api_keys == (ApiKey.of("alice", KEY), ApiKey.of("bob", "x"))
    assert s.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)
    assert ClientIdentifier(s).identify(_request("198.18.0.9", "/ws", {"X-API-Key": KEY})).client == "key:alice"


# --- end to end ----------------------------------------------------------------------

@pytest.fixture
def settings(make_settings):
    return make_settings(trusted_proxies=("127.0.0.1",), api_keys=(f"alice:{KEY}",))


@pytest.mark.gen_test(timeout=30)
async def test_a_wrong_key_gets_401_with_the_protocols_error_at_the_handshake_and_on_the_api(
        ws_url, http_client, base_url, caplog):
    caplog.set_level(logging.INFO, logger="tornado.access")
    with pytest.raises(HTTPClientError) as caught:
        await Client.connect(HTTPRequest(ws_url + "?api_key=wrong-secret"))
    assert caught.value.code == 401
    response = await http_client.fetch(base_url + "/api/factorial?api_key=wrong-secret", method="POST",
                                       body='{"number": 5}', raise_error=False)
    assert response.code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    body = json.loads(response.body)
    assert body["type"] == "error" and body["code"] == "unauthorized" and body["result"]
    assert "401" in caplog.text and "wrong-secret" not in caplog.text


@pytest.mark.gen_test(timeout=30)
async def test_the_access_log_names_the_forwarded_client_and_never_the_key(ws_url, caplog):
    caplog.set_level(logging.INFO, logger="tornado.access")
    url = ws_url + "?api_key=" + quote(KEY, safe="")
    client = await Client.connect(HTTPRequest(url, headers={"X-Forwarded-For": "198.18.7.7"}))
    try:
        assert (await client.ask({"type": "factorial", "number": 0}))["type"] == "result"
    finally:
        client.close()
    line = next(r.getMessage() for r in caplog.records if r.name == "tornado.access" and "/ws" in r.getMessage())
    assert line.startswith("101 GET /ws ") and "(198.18.7.7 via 127.0.0.1)" in line
    assert "k3y" not in caplog.text and "api_key" not in caplog.text


@pytest.mark.gen_test(timeout=30)
async def test_the_access_log_holds_paths_only_whatever_the_query_carries(http_client, base_url, caplog):
    caplog.set_level(logging.INFO, logger="tornado.access")
    secret = quote(KEY, safe="")
    page = await http_client.fetch(f"{base_url}/?api_key={secret}&x=1")
    assert page.code == 200 and page.headers["Referrer-Policy"] == "no-referrer"
    disguised = await http_client.fetch(f"{base_url}/api/factorial?api%5Fkey={secret}", method="POST",
                                        body='{"number": 5}', raise_error=False)
    assert disguised.code == 401 and json.loads(disguised.body)["code"] == "unauthorized"
    missing = await http_client.fetch(f"{base_url}/nothing?token={secret}", raise_error=False)
    assert missing.code == 404 and missing.headers["Referrer-Policy"] == "no-referrer"
    lines = [r.getMessage() for r in caplog.records if r.name == "tornado.access"]
    assert [line.split(" (")[0] for line in lines] == ["200 GET /", "401 POST /api/factorial", "404 GET /nothing"]
    assert "k3y" not in caplog.text and "api" not in caplog.text.replace("/api/factorial", "")
