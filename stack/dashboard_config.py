"""rq-dashboard settings (``rq-dashboard --config stack.dashboard_config``): the service's Redis.

The password goes in ``RQ_DASHBOARD_REDIS_PASSWORD``, never in the URL, so
neither the process list nor the dashboard's pages can show it. With
Sentinel, rq-dashboard asks the Sentinels for the primary on every page.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import rq_dashboard

from jobs.connection import client_options, sentinel_list, url_with_ca
from settings import Settings
from stack import dashboard_guard
from stack.dashboard_json import read_jobs_as_json

# rq-dashboard imports this module before it serves: from then on the process reads no pickle.
read_jobs_as_json()

_settings = Settings.from_env()
_client = client_options(_settings)
# Before rq-dashboard registers its blueprint (it imports this module first): every request
# is checked against other sites' (stack/dashboard_guard.py).
dashboard_guard.install(rq_dashboard.blueprint, _settings.rq_dashboard_bind)

RQ_DASHBOARD_REDIS_PASSWORD = _client.get("password")
if _settings.redis_sentinels:
    RQ_DASHBOARD_REDIS_URL = (f"redis+sentinel://{sentinel_list(_settings)}"
                              f"/{_settings.redis_sentinel_master}/{_client.get('db', 0)}")
    RQ_DASHBOARD_REDIS_SENTINEL_PASSWORD = _settings.redis_sentinel_password or None
else:
    _parts = urlsplit(url_with_ca(_settings))
    _user = f"{_parts.username}@" if _parts.username else ""
    RQ_DASHBOARD_REDIS_URL = urlunsplit(_parts._replace(netloc=_user + _parts.netloc.rpartition("@")[2]))


def unsupported(settings: Settings) -> str:
    """Why rq-dashboard cannot reach this Redis, or "" when it can."""
    if settings.redis_sentinels and "username" in client_options(settings):
        return "rq-dashboard's Sentinel support takes a password but no ACL user name"
    if settings.redis_sentinels and urlsplit(settings.redis_url).scheme == "rediss":
        return "rq-dashboard's Sentinel support has no TLS"
    return ""
