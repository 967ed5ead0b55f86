"""``--detach``: ask for every number and return the task ids, without waiting for the results.

The requests go over the HTTP API (``POST /api/factorial``), not the
WebSocket: a job asked on a WebSocket is one its connection waits for, and
the protocol stops a job once every connection waiting for it has gone,
while an HTTP request waits for nothing. The results are looked up later by
task id: ``GET /api/tasks/<task_id>``, or ``{"type": "result"}`` on a WebSocket.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit, urlunsplit

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from client.session import CONNECT_TIMEOUT_S, Refused, Unreachable

REQUEST_TIMEOUT_S = 30.0
SCHEMES = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


def api_url(ws_url: str) -> str:
    """The HTTP API's submit URL beside a WebSocket URL: ``ws://host:8888/ws`` -> ``http://host:8888/api/factorial``."""
    parts = urlsplit(ws_url)
    path = parts.path[:-len("/ws")] if parts.path.endswith("/ws") else parts.path.rstrip("/")
    return urlunsplit(parts._replace(scheme=SCHEMES.get(parts.scheme, parts.scheme), path=path + "/api/factorial"))


async def submit(ws_url: str, numbers: list[int], headers: dict[str, str]) -> list[dict]:
    """One answer per number, in order: the acknowledgement, or the error the server answered.

    Raises ``Unreachable`` when the server cannot be reached, ``Refused`` when it refuses the key.
    """
    url = api_url(ws_url)
    http = AsyncHTTPClient(force_instance=True)

    async def one(number: int) -> dict:
        request = HTTPRequest(url, method="POST", body=json.dumps({"number": number}),
                              headers={**headers, "Content-Type": "application/json"},
                              connect_timeout=CONNECT_TIMEOUT_S, request_timeout=REQUEST_TIMEOUT_S)
        try:
            response = await http.fetch(request, raise_error=False)
        except Exception as exc:  # noqa: BLE001 - refused, reset, timed out: no answer, whatever the way
            raise Unreachable(f"cannot reach {url}: {exc or type(exc).__name__}; is the server running?") from None
        try:
            message = json.loads(response.body)
        except ValueError:
            message = None
        if response.code in (401, 403):
            text = message.get("result") if isinstance(message, dict) else None
            raise Refused(f"{url} refused the request (HTTP {response.code}): {text or 'unauthorized'}")
        if not isinstance(message, dict) or message.get("type") not in ("result", "error"):
            return {"type": "error", "code": "bad_answer", "result": f"HTTP {response.code}, not a protocol message"}
        return message

    try:
        return await asyncio.gather(*(one(number) for number in numbers))
    finally:
        http.close()
