"""Every knob of the service, read from the environment in one place.

Tests build ``Settings(...)`` directly; processes call ``Settings.from_env()``.
The README's configuration table lists the same variables and defaults.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Mapping


EVENT_LOOPS = ("uvloop", "asyncio")
# An HTTP header name (RFC 9110, section 5.1: a token).
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
# REDIS_MAXMEMORY: a percentage of the host's memory (1 to 100), or bytes
# with redis.conf's optional unit (k, kb, m, mb, g, gb).
MEMORY_SIZE = re.compile(r"(100|[1-9][0-9]?)%|[0-9]+(k|kb|m|mb|g|gb)?")


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    # May hold a password: kept out of repr(), logs show jobs.connection.describe().
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    # CA certificates (PEM) that sign a rediss:// server's certificate.
    redis_ca_file: str = ""
    # Sentinel: "host:port" list; when set, it names the primary of
    # redis_sentinel_master, and redis_url gives only the scheme, user,
    # password and database.
    redis_sentinels: tuple[str, ...] = ()
    redis_sentinel_master: str = ""
    redis_sentinel_password: str = field(default="", repr=False)
    # Replicas that must hold a new job before it is acknowledged (Redis WAIT),
    # and how long to wait for them before answering "unavailable".
    redis_min_replicas: int = 0
    redis_replica_timeout_ms: int = 1000
    # The memory cap of the Procfile's own Redis (stack/redis.py): a share of
    # the host's memory ("25%") or a size as redis.conf writes it ("4gb",
    # "0" for none). Past it Redis evicts expiring keys (results), never
    # queued work; see docs/deployment.md for the sizing.
    redis_maxmemory: str = "25%"
    # "" listens on every interface; "localhost" keeps the service private.
    server_host: str = ""
    server_port: int = 8888
    # Server processes sharing the port (SO_REUSEPORT); 0: one per core.
    web_processes: int = 0
    # On SIGTERM, how long to wait for open connections to close before exiting.
    drain_timeout_s: float = 5.0
    # Redis not answering (handlers/redis_watch.py): a request gets
    # "unavailable" after this long without an answer from Redis, and a
    # WebSocket that spent redis_lost_close_s so is closed with 1013, so its
    # client goes to a server that reaches Redis.
    redis_unavailable_s: float = 1.0
    redis_lost_close_s: float = 3.0

    max_number: int = 1_000_000
    # number <= soft_max_number goes to the soft queue, anything larger to hard.
    soft_max_number: int = 1000
    # Soft requests that arrive together share one RQ job, this many at most.
    soft_batch_size: int = 50
    soft_timeout_s: int = 10
    hard_timeout_s: int = 60
    result_ttl_s: int = 3600
    failure_ttl_s: int = 3600
    # Runs a job gets in all when its worker is lost to a fault outside the job
    # (killed, paused past its lease, cut off from Redis); after the last one
    # it fails with job_failed (jobs/lifecycle.py).
    job_max_attempts: int = 3
    # A job no one waits for any more (every connection that asked for it has
    # closed, on every server, and no HTTP client holds it) is stopped this
    # many seconds later, unless someone asks for it again; 0: never.
    abandon_grace_s: int = 30

    max_frame_bytes: int = 64 * 1024
    # Longest the delivery loop waits inside Redis for a job to end before it
    # looks again; a job's end wakes it at once.
    delivery_wait_ms: int = 50
    # How often every waited-for job is checked, for ends that sent no event
    # (a work horse killed with SIGKILL runs no callback).
    sweep_interval_s: float = 1.0

    # Fair use: per connection, and per queue.
    max_in_flight: int = 100
    max_requests_per_s: int = 200
    max_queue_length: int = 100_000
    # Fair use per client (handlers/identity.py), across all its connections
    # and all servers, counted in Redis (jobs/quota.py); 0 means no limit.
    client_max_connections: int = 100
    client_max_in_flight: int = 500
    client_max_requests_per_s: int = 200
    # Jobs one client made that wait for their turn (not yet started), counted
    # in Redis across its connections and servers; disconnecting frees none.
    client_max_queued: int = 1000
    # Bytes written to one connection that its socket has not taken yet; past
    # it the connection is closed with 1008 (a client that does not read).
    # 0 means no limit.
    client_max_unsent_bytes: int = 64 * 1024 * 1024
    # A server that dies without closing: its clients' counts outlive it this long.
    client_lease_s: float = 10.0
    # Fair scheduling: RQ jobs kept in each queue per worker serving it; the
    # rest wait in their clients' pending lists for their turn.
    queued_jobs_per_worker: int = 1

    # Client identity (handlers/identity.py). Proxies (addresses or CIDR
    # networks) whose real_ip_header names the client; anyone else's is ignored.
    trusted_proxies: tuple[str, ...] = ()
    # The one header a trusted proxy names the client in: X-Forwarded-For (a
    # list, read right to left), or one holding a single address the proxy
    # sets (X-Real-IP). The other is never read.
    real_ip_header: str = "X-Forwarded-For"
    # IPv6 addresses in one network of this prefix length are one client.
    client_ipv6_prefix: int = 64
    # "name:key" entries: a request carrying the key is the client "name".
    # Secrets: kept out of repr().
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_keys_required: bool = False

    # Origins allowed to open a WebSocket, or to send a state-changing HTTP
    # request from a browser, besides the server's own.
    allowed_origins: tuple[str, ...] = ()
    # Slow and dead connections (handlers/front_door.py): a request's headers
    # must arrive within header_timeout_s (also how long an idle keep-alive
    # connection stays open), its body within body_timeout_s.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    # A WebSocket is pinged every interval; one that has not answered within
    # the timeout is closed.
    websocket_ping_interval_s: float = 20.0
    websocket_ping_timeout_s: float = 20.0
    websocket_compression: bool = False
    tls_certfile: str = ""
    tls_keyfile: str = ""
    log_level: str = "INFO"
    # Serve the IOLoop lag and memory probe on 127.0.0.1:this port (0: off).
    loop_lag_port: int = 0
    # The server's event loop: "uvloop" (libuv's, faster), or "asyncio" (the standard library's).
    event_loop: str = "uvloop"

    def __post_init__(self) -> None:
        if not 0 <= self.soft_max_number <= self.max_number:
            raise SettingsError(
                f"SOFT_MAX_NUMBER={self.soft_max_number} must lie between 0 and MAX_NUMBER={self.max_number}"
            )
        if self.job_max_attempts < 1:
            raise SettingsError(f"JOB_MAX_ATTEMPTS={self.job_max_attempts} must be at least 1")
        if self.queued_jobs_per_worker < 1:
            raise SettingsError(f"QUEUED_JOBS_PER_WORKER={self.queued_jobs_per_worker} must be at least 1")
        if self.soft_batch_size < 1:
            raise SettingsError(f"SOFT_BATCH_SIZE={self.soft_batch_size} must be at least 1")
        if self.redis_sentinels and not self.redis_sentinel_master:
            raise SettingsError("REDIS_SENTINELS needs REDIS_SENTINEL_MASTER, the name the Sentinels give the primary")
        for address in self.redis_sentinels:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise SettingsError(f"REDIS_SENTINELS entry {address!r} is not host:port")
        for entry in self.trusted_proxies:
            try:
                # strict: 10.0.0.5/8 (host bits set) is a typo, not "all of 10/8".
                ipaddress.ip_network(entry, strict=True)
            except ValueError as err:
                raise SettingsError(f"TRUSTED_PROXIES: {entry!r} is not an address or a CIDR network ({err})") from None
        if not _HEADER_NAME.fullmatch(self.real_ip_header):
            raise SettingsError(f"REAL_IP_HEADER={self.real_ip_header!r} is not an HTTP header name")
        if not 1 <= self.client_ipv6_prefix <= 128:
            raise SettingsError(f"CLIENT_IPV6_PREFIX={self.client_ipv6_prefix} must lie between 1 and 128")
        if self.websocket_ping_timeout_s > self.websocket_ping_interval_s:
            # Tornado would shorten it to the interval without a word.
            raise SettingsError(f"WEBSOCKET_PING_TIMEOUT_S={self.websocket_ping_timeout_s} must not exceed "
                                f"WEBSOCKET_PING_INTERVAL_S={self.websocket_ping_interval_s}")
        for position, entry in enumerate(self.api_keys, 1):
            name, _, key = entry.partition(":")
            if not name.strip() or not key:
                # The entry itself holds a secret: name only its position.
                raise SettingsError(f"API_KEYS: entry {position} is not name:key")
        if self.api_keys_required and not self.api_keys:
            raise SettingsError("API_KEYS_REQUIRED is set but API_KEYS lists no key")
        # Origins compare without a trailing slash.
        object.__setattr__(self, "allowed_origins", tuple(o.rstrip("/") for o in self.allowed_origins))
        if bool(self.tls_certfile) != bool(self.tls_keyfile):
            raise SettingsError("TLS_CERTFILE and TLS_KEYFILE must be set together")
        if not MEMORY_SIZE.fullmatch(self.redis_maxmemory.strip().lower()):
            raise SettingsError(f"REDIS_MAXMEMORY={self.redis_maxmemory!r} is not a size (4gb, 512mb, bytes) "
                                "or a share of the host's memory (25%)")
        if self.event_loop not in EVENT_LOOPS:
            raise SettingsError(f"EVENT_LOOP={self.event_loop!r} is not one of {', '.join(EVENT_LOOPS)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from environment variables named like the fields, upper-cased."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            name = f.name.upper()
            if name in environ:
                values[f.name] = _convert(name, environ[name], f.type)
        return cls(**values)

    @property
    def tls(self) -> bool:
        return bool(self.tls_certfile)


def _convert(name: str, raw: str, kind: str):
    text = raw.strip()
    try:
        if kind == "int":
            value = int(text)
            if value < 0:
                raise ValueError("negative")
            return value
        if kind == "float":
            value = float(text)
            if not value > 0:
                raise ValueError("not positive")
            return value
        if kind == "bool":
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError("not a boolean")
        if kind == "tuple[str, ...]":
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return text
    except ValueError:
        expected = {"int": "a whole number >= 0", "float": "a positive number", "bool": "true or false"}[kind]
        raise SettingsError(f"{name}={raw!r} is not {expected}") from None
