"""Who a request comes from, for fair share: one name per client, however many connections it opens.

By default a client is its peer address; IPv6 addresses are grouped by their
/64 prefix, since one host or home network usually holds a whole /64.
"""

from __future__ import annotations

import ipaddress

IPV6_PREFIX = 64


def client_of(peer_ip: str) -> str:
    """The client name for a connection from ``peer_ip``."""
    try:
        address = ipaddress.ip_address(peer_ip)
    except ValueError:
        return peer_ip or "unknown"
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{IPV6_PREFIX}", strict=False))
    return str(address)
