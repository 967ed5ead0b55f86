"""RQ settings for ``rq worker -c stack.rq_config``: the service's Redis, as jobs.connection builds it.

``rq worker`` reads the upper-case names of this module. With Sentinel it
connects through ``SENTINEL`` (RQ's own Sentinel support), otherwise through
``REDIS_URL``; either way nothing secret appears on the command line.
"""

from __future__ import annotations

from jobs.connection import client_options, primary_options, sentinel_addresses, sentinel_options, url_with_ca
from settings import Settings

_settings = Settings.from_env()

if _settings.redis_sentinels:
    _client = client_options(_settings)
    SENTINEL = {
        "INSTANCES": sentinel_addresses(_settings),
        "MASTER_NAME": _settings.redis_sentinel_master,
        "DB": _client.pop("db", 0),
        "USERNAME": _client.pop("username", None),
        "PASSWORD": _client.pop("password", None),
        "SSL": _client.pop("ssl", False),
        "SENTINEL_KWARGS": sentinel_options(_settings),
        # What is left (the CA file, URL query options), keepalive probes
        # (RQ's blocking dequeue has a socket timeout of minutes, too long
        # to notice a primary whose host is cut off) and the retry policy.
        "CONNECTION_KWARGS": {**_client, **primary_options()},
    }
else:
    REDIS_URL = url_with_ca(_settings)
