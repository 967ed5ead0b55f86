"""Which web pages may use the service from a browser: the server's own, and ``ALLOWED_ORIGINS``.

Browsers send the page's origin with every WebSocket handshake and with every
request that may change something (``POST``, ``DELETE``), and let any page
send those to any host. Without this check a page on another site could use
its visitors' browsers, each a different client to the per-client limits, to
load this service. Programs that are not browsers (curl, wscat, scripts) send
no ``Origin`` and are not checked.
"""

from __future__ import annotations

from typing import AbstractSet
from urllib.parse import urlparse

# Methods that change nothing. A page on another site may send them, but
# cannot read their answers: the service sends no CORS header.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def allowed(origin: str, host: str, allowed_origins: AbstractSet[str]) -> bool:
    """Whether a page at ``origin`` may use the service reached as ``host`` (the request's Host header).

    ``allowed_origins`` is ``Settings.allowed_origins``: lower-cased, without a trailing slash.
    """
    parsed = urlparse(origin)
    if parsed.netloc and parsed.netloc.lower() == host.lower():
        return True
    return origin.rstrip("/").lower() in allowed_origins


def refused(method: str, origin: str | None, host: str, allowed_origins: AbstractSet[str]) -> bool:
    """Whether an HTTP request must be refused: one that may change something, sent by a page of another site."""
    return origin is not None and method not in SAFE_METHODS and not allowed(origin, host, allowed_origins)
