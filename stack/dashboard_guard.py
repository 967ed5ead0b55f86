"""rq-dashboard refuses what another website makes a browser send it (CSRF, DNS rebinding).

rq-dashboard deletes, requeues and empties with plain POSTs (and requeues a
whole failed registry with a GET), with no token: any page an operator opens
could make the operator's browser send one, to a dashboard on loopback too,
and a browser that has the dashboard's login sends it along. So a request
that can change something is refused (403) when the browser says it comes
from another site: its ``Sec-Fetch-Site`` is ``cross-site`` or ``same-site``,
or its ``Origin`` is not the dashboard's own. And on loopback, a request
whose ``Host`` is not a loopback name is refused whatever it asks: that is a
page of another site whose name was made to resolve to 127.0.0.1 (DNS
rebinding), which a browser then counts as same-origin.

Clients that are not browsers (curl, scripts) send neither header and pass:
they are not the risk this closes. A browser too old to send either header
is not protected; docs/deployment.md says so.
"""

from __future__ import annotations

from typing import Mapping
from urllib.parse import urlsplit

READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# rq-dashboard's one GET that changes something: /requeue/<queue> requeues every failed job
# of a queue (under the dashboard's URL prefix, if it has one).
CHANGING_GET = "/requeue/"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
OTHER_SITES = frozenset({"cross-site", "same-site"})


def changes_something(method: str, path: str) -> bool:
    return method.upper() not in READ_ONLY_METHODS or CHANGING_GET in path


def _hostname(host: str) -> str:
    """The name in a Host header, without its port ("[::1]:9181" -> "::1")."""
    return (urlsplit("//" + host).hostname or "").lower()


def refusal(method: str, path: str, headers: Mapping[str, str], bind: str) -> str:
    """Why this request must be refused, or "" when it may be served."""
    host = headers.get("Host", "")
    if bind in LOOPBACK_NAMES and _hostname(host) not in LOOPBACK_NAMES:
        return f"the dashboard listens on loopback; Host {host!r} is another site's name"
    if not changes_something(method, path):
        return ""
    site = headers.get("Sec-Fetch-Site", "").lower()
    if site in OTHER_SITES:
        return f"a {site} request may not change anything here"
    origin = headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
        return f"a request from {origin!r} may not change anything here"
    return ""


def install(blueprint, bind: str) -> None:
    """Check every request to rq-dashboard's ``blueprint`` (Flask) before it is served."""
    from flask import abort, request

    @blueprint.before_request
    def refuse_other_sites():
        why = refusal(request.method, request.path, request.headers, bind)
        if why:
            abort(403, description=why)
