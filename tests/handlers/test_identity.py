"""A client's name: its IPv4 address, or its IPv6 /64."""

from handlers.identity import client_of


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
