"""Which requests rq-dashboard refuses as another site's (stack/dashboard_guard.py); the real dashboard's
refusals are in tests/stack/test_dashboard.py."""

import pytest

from stack.dashboard_guard import refusal

HOST = {"Host": "127.0.0.1:9181"}


@pytest.mark.parametrize("method, path, headers", [
    ("POST", "/queue/hard/queued/empty", {**HOST, "Sec-Fetch-Site": "cross-site"}),
    ("POST", "/job/x/delete", {**HOST, "Sec-Fetch-Site": "same-site"}),
    ("POST", "/job/x/requeue", {**HOST, "Origin": "http://127.0.0.1:8080"}),  # another port: another origin
    ("POST", "/job/x/requeue", {**HOST, "Origin": "null"}),
    ("DELETE", "/job/x", {**HOST, "Origin": "https://evil.example"}),
    ("GET", "/requeue/hard", {**HOST, "Sec-Fetch-Site": "cross-site"}),
    ("GET", "/rq/requeue/hard", {**HOST, "Origin": "https://evil.example"}),  # under a URL prefix
    ("GET", "/0/view", {"Host": "evil.example:9181"}),  # DNS rebinding: any request
    ("GET", "/0/view", {}),  # no Host at all
])
def test_refused(method, path, headers):
    assert refusal(method, path, headers, bind="127.0.0.1")


@pytest.mark.parametrize("method, path, headers", [
    ("POST", "/queue/hard/queued/empty", {**HOST, "Origin": "http://127.0.0.1:9181", "Sec-Fetch-Site": "same-origin"}),
    ("POST", "/job/x/delete", HOST),  # a script: no browser headers
    ("POST", "/job/x/delete", {"Host": "[::1]:9181", "Origin": "http://[::1]:9181"}),
    ("POST", "/job/x/delete", {"Host": "localhost:9181", "Sec-Fetch-Site": "none"}),  # typed by the user
    ("GET", "/0/view", {**HOST, "Sec-Fetch-Site": "cross-site"}),  # a link from elsewhere only shows it
    ("GET", "/0/data/queues.json", {**HOST, "Origin": "https://evil.example"}),
])
def test_served(method, path, headers):
    assert refusal(method, path, headers, bind="127.0.0.1") == ""


def test_behind_a_login_on_another_address_any_host_name_is_served_but_not_another_sites_change():
    headers = {"Host": "dashboard.internal:9181"}
    assert refusal("GET", "/0/view", headers, bind="0.0.0.0") == ""
    assert refusal("POST", "/job/x/delete", {**headers, "Origin": "https://evil.example"}, bind="0.0.0.0")
