"""The per-client counts (jobs/quota.py) leave nothing in Redis without a TTL, and live counts never expire."""

from __future__ import annotations

import time

from redis import Redis

from jobs.quota import PREFIX, Admission, QuotaStore
from settings import Settings
from tests.helpers import wait_until

LEASE_S = 0.4


def quota_keys(redis: Redis) -> dict[str, int]:
    """Every quota key and its TTL in ms (-1: none)."""
    return {key.decode(): redis.pttl(key) for key in redis.scan_iter(match=PREFIX + "*", count=1000)}


def test_every_quota_key_has_a_ttl_and_all_are_gone_after_the_last_server_dies(redis_url):
    settings = Settings(redis_url=redis_url, client_lease_s=LEASE_S)
    redis = Redis.from_url(redis_url)
    a, b = QuotaStore(redis, settings, "a"), QuotaStore(redis, settings, "b")
    a.exchange({"198.18.0.1": (1, 2)}, [Admission("198.18.0.1", "connection", 1),
                                         Admission("198.18.0.1", "requests", 3)])
    b.exchange({"198.18.0.2": (1, 0)}, [Admission("198.18.0.1", "requests", 1)])
    found = quota_keys(redis)
    assert {PREFIX + "servers", PREFIX + "server:a", PREFIX + "server:b", PREFIX + "client:198.18.0.1",
            PREFIX + "client:198.18.0.2"} <= set(found)
    assert all(0 < ttl <= 5 * LEASE_S * 1000 for ttl in found.values()), found
    # Both die without retiring: no server is left to clean up after them.
    wait_until(lambda: not quota_keys(redis), timeout=5 * LEASE_S + 5, what="the quota keys to expire")


def test_a_live_servers_counts_outlast_the_ttls_while_it_renews_its_lease(redis_url):
    settings = Settings(redis_url=redis_url, client_max_connections=3, client_lease_s=LEASE_S)
    redis = Redis.from_url(redis_url)
    a, b = QuotaStore(redis, settings, "a"), QuotaStore(redis, settings, "b")
    a.exchange({}, [Admission("c", "connection", 2)])
    # a renews its lease a few times per lease (jobs/gateway.py), with no change
    # to its counts, for more than the client hash's TTL (3 leases).
    renewals = 0
    deadline = time.monotonic() + 5 * LEASE_S
    while time.monotonic() < deadline and renewals < 100:
        time.sleep(LEASE_S / 3)  # the renewal pace, a few per lease: part of the scenario
        a.exchange({}, [])
        renewals += 1
    _, (verdict,) = b.exchange({}, [Admission("c", "connection", 3)])
    assert (verdict.admitted, verdict.limit) == (1, "connections"), "a's 2 connections stopped counting"
