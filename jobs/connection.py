"""Every connection to the service's Redis, built from settings in one place.

The server, the workers (through ``stack.rq_config``), rq-dashboard (through
``stack.dashboard``) and the launchers all connect through here, so they
agree on:

- ``redis://`` and ``rediss://`` URLs, with ``REDIS_CA_FILE`` naming the CA
  that signs a TLS server's certificate;
- ACL users: ``redis://user:password@host:port/db``;
- Sentinel: ``REDIS_SENTINELS`` lists the Sentinels, ``REDIS_SENTINEL_MASTER``
  names the primary, ``REDIS_SENTINEL_PASSWORD`` is the Sentinels' own
  password. The URL's host is then ignored; its scheme, user, password and
  database still apply to the primary. A connection asks the Sentinels for
  the primary each time it (re)connects, so a failover needs no restart.

Every call has one explicit budget (``RETRY``, ``SENTINEL_TIMEOUT_S``):
redis-py's default for a client it builds itself is 10 retries with
exponential backoff, timeouts included, which made one question to a silent
Sentinel take 15 s.

Passwords never reach a log: ``describe()`` is the form to print.
"""

from __future__ import annotations

import socket
import threading
import weakref
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from time import monotonic
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis import Redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from settings import Settings

REDACTED = "***"

# A peer that vanished without a word (its host cut off) is given up on in
# about 11 s instead of minutes, and the next connection asks the Sentinels
# for the new primary: keepalive probes (5 s idle, then 3 probes 2 s apart)
# cover an idle connection or a long blocking read such as a worker's BLPOP;
# TCP_USER_TIMEOUT covers a write left unacknowledged; the connect timeout
# covers a SYN to an address that no longer answers.
KEEPALIVE = {
    "socket_keepalive": True,
    "socket_keepalive_options": {socket.TCP_KEEPIDLE: 5, socket.TCP_KEEPINTVL: 2, socket.TCP_KEEPCNT: 3,
                                 socket.TCP_USER_TIMEOUT: 11_000},
    "socket_connect_timeout": 5,
}
# The retry policy of every connection, to the primary and to each Sentinel:
# one try, no retry, no backoff. A call costs at most one connection attempt
# (for the primary: the Sentinels' answer, at most SENTINEL_TIMEOUT_S, then
# the connect timeout, then the handshake within the socket timeout) and one
# wait for the reply (the socket timeout). The callers retry at their own
# pace: a client on "unavailable", the delivery loop after 0.5 s, a worker's
# loop. A retry here would only multiply the wait on a silent host.
RETRY = Retry(NoBackoff(), 0)
# A Sentinel's connect and reply timeout, and the longest that asking them all
# for the primary takes (ParallelSentinel asks them at once).
SENTINEL_TIMEOUT_S = 1.0


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:{REDACTED}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def describe(settings: Settings) -> str:
    """Where the service's Redis is, for logs and error pages: never a password."""
    if settings.redis_sentinels:
        return (f"primary {settings.redis_sentinel_master!r} of Sentinels {sentinel_list(settings)}"
                f" ({redact_url(settings.redis_url)})")
    return redact_url(settings.redis_url)


def sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    """The Sentinels as redis-py takes them: (host, port) pairs, as settings.py parsed them."""
    return list(settings.redis_sentinels)


def sentinel_list(settings: Settings) -> str:
    """The Sentinels as "host:port,[v6 address]:port", as URLs and logs write them."""
    return ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in settings.redis_sentinels)


def client_options(settings: Settings) -> dict:
    """redis-py keyword arguments for the primary: credentials, database, TLS; no address."""
    options = {key: value for key, value in parse_url(settings.redis_url).items() if key not in ("host", "port")}
    if urlsplit(settings.redis_url).scheme == "rediss":
        options.pop("connection_class", None)
        options["ssl"] = True
        if settings.redis_ca_file:
            options["ssl_ca_certs"] = settings.redis_ca_file
    return options


def sentinel_options(settings: Settings) -> dict:
    """redis-py keyword arguments for talking to the Sentinels themselves."""
    extra = {"password": settings.redis_sentinel_password} if settings.redis_sentinel_password else {}
    return {"socket_timeout": SENTINEL_TIMEOUT_S, "socket_connect_timeout": SENTINEL_TIMEOUT_S,
            "retry": RETRY, **extra}


def primary_options() -> dict:
    """redis-py keyword arguments every connection to the primary gets: keepalive bounds and ``RETRY``."""
    return {**KEEPALIVE, "retry": RETRY}


def connect(settings: Settings, **options) -> Redis:
    """A client of the primary. ``options`` are redis-py's (timeouts, ...)."""
    options = {**primary_options(), **options}
    if settings.redis_sentinels:
        sentinel = ParallelSentinel(sentinel_addresses(settings), sentinel_kwargs=sentinel_options(settings))
        merged = {**client_options(settings), **options}
        return sentinel.master_for(settings.redis_sentinel_master, **merged)
    extra = {"ssl_ca_certs": settings.redis_ca_file} if settings.redis_ca_file and _tls(settings) else {}
    return Redis.from_url(settings.redis_url, **extra, **options)


class ParallelSentinel(Sentinel):
    """Asks every Sentinel for the primary at once and takes the first good answer.

    redis-py asks them one after another, so a silent Sentinel listed first
    delays every connection by its timeout. Here a dead or silent one costs
    nothing while another answers, and the whole question ends within
    ``SENTINEL_TIMEOUT_S``, or as soon as a majority of the Sentinels replied
    and none named a usable primary (during a failover: the silent ones are
    not waited for then either). A Sentinel still busy with an earlier question
    (silent: it holds its thread up to its timeout) is not asked again
    meanwhile: the answer to that question serves, so a silent Sentinel never
    ties up more than one thread.
    """

    def __init__(self, sentinels, **kwargs):
        super().__init__(sentinels, **kwargs)
        self._lock = threading.Lock()
        self._asking: dict[int, Future] = {}  # index in self.sentinels -> its question under way
        self._threads = ThreadPoolExecutor(max(len(self.sentinels), 1), thread_name_prefix="sentinel")
        # Idle threads end when this object goes (a process builds few of them).
        weakref.finalize(self, self._threads.shutdown, wait=False)

    def discover_master(self, service_name):
        with self._lock:
            questions = {}
            for index, sentinel in enumerate(self.sentinels):
                future = self._asking.get(index)
                if future is None or future.done():
                    future = self._asking[index] = self._threads.submit(sentinel.sentinel_masters)
                questions[future] = sentinel
        deadline = monotonic() + SENTINEL_TIMEOUT_S
        errors = []
        replied = 0
        waiting = set(questions)
        while waiting and replied <= len(questions) // 2:  # one pass per Sentinel at most, never past the deadline
            done, waiting = wait(waiting, timeout=max(deadline - monotonic(), 0), return_when=FIRST_COMPLETED)
            if not done:
                errors.append(f"{len(waiting)} Sentinel(s) did not answer within {SENTINEL_TIMEOUT_S} s")
                break
            for future in done:
                try:
                    masters = future.result()
                except (RedisConnectionError, RedisTimeoutError) as exc:
                    errors.append(f"{questions[future]} - {exc!r}")
                    continue
                replied += 1
                state = masters.get(service_name)
                if state and self.check_master_state(state, service_name):
                    return (self._force_master_ip if self._force_master_ip is not None else state["ip"],
                            state["port"])
        if replied:
            errors.append(f"{replied} Sentinel(s) named no usable primary")
        raise MasterNotFoundError(f"No master found for {service_name!r}: {', '.join(errors)}")


def url_with_ca(settings: Settings) -> str:
    """``redis_url`` with the CA file as a query parameter, for tools that take only a URL."""
    if not (settings.redis_ca_file and _tls(settings)):
        return settings.redis_url
    parts = urlsplit(settings.redis_url)
    query = parse_qsl(parts.query) + [("ssl_ca_certs", settings.redis_ca_file)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _tls(settings: Settings) -> bool:
    return urlsplit(settings.redis_url).scheme == "rediss"
