"""The client's pure helpers: where the API key comes from, and the HTTP API beside a WebSocket URL."""

import pytest

from client.credentials import KeyFileError, api_key, key_headers, url_carries_key
from client.detach import api_url


def test_the_key_file_wins_over_the_environment_and_only_its_first_line_counts(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("  from-file \nsecond line\n")
    assert api_key(str(key_file), environ={"FACTORIAL_API_KEY": "from-env"}) == "from-file"
    assert api_key(None, environ={"FACTORIAL_API_KEY": " from-env\n"}) == "from-env"
    assert api_key(None, environ={"FACTORIAL_API_KEY": ""}) is None
    assert api_key(None, environ={}) is None


@pytest.mark.parametrize("content, message", [("", "is empty"), ("\n\n", "is empty")])
def test_an_empty_key_file_is_an_error(tmp_path, content, message):
    key_file = tmp_path / "key"
    key_file.write_text(content)
    with pytest.raises(KeyFileError, match=message):
        api_key(str(key_file), environ={})


def test_a_missing_key_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(KeyFileError, match=f"cannot read the API key file {tmp_path}/nothing: No such file"):
        api_key(str(tmp_path / "nothing"), environ={})


def test_the_key_goes_in_the_x_api_key_header():
    assert key_headers("k") == {"X-API-Key": "k"}
    assert key_headers(None) == {}


@pytest.mark.parametrize("url, carries", [
    ("ws://h:8888/ws?api_key=k", True), ("ws://h:8888/ws?a=1&api_key=", True),
    ("ws://h:8888/ws", False), ("ws://h:8888/ws?my_api_key=k", False),
])
def test_a_key_in_the_url_is_noticed(url, carries):
    assert url_carries_key(url) is carries


@pytest.mark.parametrize("ws_url, http_url", [
    ("ws://localhost:8888/ws", "http://localhost:8888/api/factorial"),
    ("wss://example.com/ws", "https://example.com/api/factorial"),
    ("wss://example.com/factorial/ws", "https://example.com/factorial/api/factorial"),
    ("ws://h:1/", "http://h:1/api/factorial"),
])
def test_detach_posts_to_the_http_api_beside_the_websocket(ws_url, http_url):
    assert api_url(ws_url) == http_url
