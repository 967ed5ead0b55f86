"""Who a request comes from, for fair share: one name per client, however many connections it opens.

By default a client is its address: the direct peer's, or, when that peer is
one of ``TRUSTED_PROXIES``, the address the proxy names in ``REAL_IP_HEADER``
(one header, never another: see ``ClientIdentifier.address``). IPv6
addresses are grouped by their /64 prefix (``CLIENT_IPV6_PREFIX``), since one
host or home network usually holds a whole /64. A request that carries one of
``API_KEYS`` is the client that key names instead, wherever it comes from.

Keys never reach a log: they are looked up by their SHA-256, and the query
parameter that carries one is cut from the request's URI as soon as it is read
(the access log shows only paths anyway). The parameter is ``api_key`` spelled
exactly so: a name that only decodes to it (``api%5Fkey``) is refused, never
taken for a key, so no spelling of it can slip past what looks for the key.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from tornado.httputil import HTTPHeaders, HTTPServerRequest

from protocol import ErrorCode, ProtocolError
from settings import Settings, key_digest

IPV6_PREFIX = 64  # the default of CLIENT_IPV6_PREFIX
# Where a key may come: headers for programs, a query parameter for browsers,
# whose WebSocket API cannot set headers.
API_KEY_HEADER = "X-API-Key"
API_KEY_PARAMETER = "api_key"
# Client names of key holders start with this; addresses never do.
KEY_CLIENT_PREFIX = "key:"
# What api_key_of answers for a parameter whose name only decodes to api_key.
DISGUISED_KEY = object()


def client_of(address: str, ipv6_prefix: int = IPV6_PREFIX) -> str:
    """The client name for requests from ``address``."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address or "unknown"
    if parsed.version == 6:
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/{ipv6_prefix}", strict=False))
    return str(parsed)


@dataclass(frozen=True)
class Identity:
    client: str  # the name fair share counts under
    address: str  # the address believed to be the client's (the peer's, or a trusted proxy's word)
    peer: str  # the direct peer, as the socket saw it


class ClientIdentifier:
    """Tells the client of each request, from its peer, its proxy headers and its API key.

    ``TRUSTED_PROXIES`` and ``API_KEYS`` come parsed from settings.py.
    """

    def __init__(self, settings: Settings):
        self.trusted_proxies = settings.trusted_proxies
        self.real_ip_header = settings.real_ip_header
        self.ipv6_prefix = settings.client_ipv6_prefix
        self.key_names = {key.digest: KEY_CLIENT_PREFIX + key.name for key in settings.api_keys}
        self.keys_required = settings.api_keys_required

    def identify(self, request: HTTPServerRequest) -> Identity:
        """The request's identity; raises ``unauthorized`` for a wrong key, or a missing one when keys are required.

        Removes the key from the request's URI, so that nothing logs it later.
        """
        peer = request.remote_ip or ""
        address = self.address(peer, request.headers)
        key = api_key_of(request)
        if key is DISGUISED_KEY:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, f"send the key as ?{API_KEY_PARAMETER}= spelled exactly so, "
                                "not percent-encoded")
        if key is None:
            if self.keys_required:
                raise ProtocolError(ErrorCode.UNAUTHORIZED, "an API key is required: send it in the "
                                    f"{API_KEY_HEADER} header, as Authorization: Bearer, or as ?{API_KEY_PARAMETER}=")
            return Identity(client_of(address, self.ipv6_prefix), address, peer)
        name = self.key_names.get(key_digest(key))
        if name is None:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "this API key is not known here")
        return Identity(name, address, peer)

    def address(self, peer: str, headers: HTTPHeaders) -> str:
        """The client's address: the peer's, unless the peer is a trusted proxy that names another.

        Only ``REAL_IP_HEADER`` is read; any other header a client may have
        written (an ``X-Real-IP`` when the proxies use ``X-Forwarded-For``, or
        the reverse) is ignored, so it cannot win over the proxy's word.

        ``X-Forwarded-For`` is read right to left: each proxy appends the
        address it was connected from, so the right-most address that is not
        a trusted proxy is the last one a trusted hop vouches for; anything
        left of it was written by the client and may be forged.

        Any other header (``X-Real-IP``) holds one address, which the proxy
        sets, replacing whatever the client sent; should it have added its
        own after the client's instead, its own is the last, and the last is
        read. Garbage or nothing there: the proxy itself is the client.
        """
        if not self.trusted(peer):
            return peer
        hops = [hop.strip() for line in headers.get_list(self.real_ip_header) for hop in line.split(",")]
        hops = [hop for hop in hops if hop]
        if self.real_ip_header.lower() != "x-forwarded-for":
            return (_plain_address(hops[-1]) if hops else None) or peer
        if hops:
            nearest = peer
            for hop in reversed(hops):
                address = _plain_address(hop)
                if address is None:
                    return nearest  # garbage: the trusted hop that passed it on is all we know
                if not self.trusted(address):
                    return address
                nearest = address
            return nearest  # every hop is a trusted proxy: the request comes from the first of them
        return peer

    def trusted(self, address: str) -> bool:
        """Whether ``address`` is one of ``TRUSTED_PROXIES``."""
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            return False
        if parsed.version == 6 and parsed.ipv4_mapped is not None:
            parsed = parsed.ipv4_mapped
        return any(parsed in network for network in self.trusted_proxies)


def api_key_of(request: HTTPServerRequest) -> str | object | None:
    """The key a request carries, if any, or ``DISGUISED_KEY``; the query parameter is cut from its URI and arguments.

    A header's key wins over the parameter's. Only a parameter named exactly
    ``api_key`` carries a key; one whose name merely decodes to it is
    answered with ``DISGUISED_KEY`` (the caller refuses the request), and cut
    all the same.
    """
    key = request.headers.get(API_KEY_HEADER, "").strip()
    if not key:
        scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer":
            key = credentials.strip()
    # Tornado's arguments hold decoded names: api%5Fkey is there as api_key too.
    if API_KEY_PARAMETER not in request.query_arguments:
        return key or None
    named = [name for name, _, _ in _parameters(request.query) if unquote_plus(name) == API_KEY_PARAMETER]
    if not key and named[:1] == [API_KEY_PARAMETER]:
        key = request.query_arguments[API_KEY_PARAMETER][0].decode("utf-8", errors="replace")
    request.uri = without_api_key(request.uri)
    request.query = urlsplit(request.uri).query
    request.query_arguments.pop(API_KEY_PARAMETER, None)
    request.arguments.pop(API_KEY_PARAMETER, None)
    if any(name != API_KEY_PARAMETER for name in named):
        return DISGUISED_KEY
    return key or None


def without_api_key(uri: str) -> str:
    """``uri`` without any query parameter whose name is, or decodes to, ``api_key``; the rest left as written."""
    parts = urlsplit(uri)
    kept = [raw for name, raw, _ in _parameters(parts.query) if unquote_plus(name) != API_KEY_PARAMETER]
    return urlunsplit(parts._replace(query="&".join(kept)))


def _parameters(query: str) -> list[tuple[str, str, str]]:
    """The query's parameters as written: (name, the whole parameter, value), names and values not decoded."""
    found = []
    for raw in query.split("&"):
        name, _, value = raw.partition("=")
        if raw:
            found.append((name, raw, value))
    return found


def logged_client(handler) -> str:
    """Who to name in a request's log line: the believed address, and the peer when a proxy vouched for it."""
    identity: Identity | None = getattr(handler, "identity", None)
    if identity is not None and identity.address != identity.peer:
        return f"{identity.address} via {identity.peer}"
    return handler.request.remote_ip


def _plain_address(hop: str) -> str | None:
    """An address from a forwarding header entry (``1.2.3.4``, ``1.2.3.4:5678``, ``[2001:db8::1]:80``), or None."""
    hop = hop.strip()
    if hop.startswith("["):
        hop = hop[1:].partition("]")[0]
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None
