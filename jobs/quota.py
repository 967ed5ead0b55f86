"""Per-client limits counted in Redis, so that every server process shares one count per client.

Each server process keeps its own count, per client, of open connections and
requests in flight, and writes it to a hash per client (one field per server
and count). An admission adds up every server's field, so two servers never
let one client past its limit together. The request rate is a token bucket per
client, refilled by Redis's own clock (``TIME``), so hosts whose clocks differ
share one rate.

A server that dies cannot take its counts back. So each server holds a lease
(a score in a sorted set, in Redis time) that it renews while it counts
anybody; whichever server next talks to Redis deletes the counts of a server
whose lease ran out. Counts therefore recover ``CLIENT_LEASE_S`` after a
server is killed.

Every key also carries a TTL, a few leases long, so that nothing is left
behind when the last server dies (no one is left to run the cleanup above):
a server renews the TTLs of its keys once per lease while it counts anybody,
and the list of leases outlives every server's own keys.

Everything happens in one Lua script per exchange, so it is atomic and costs
one round trip, made on the job gateway's threads (never on the IOLoop). The
script reads keys it computes itself: it needs a single Redis (or a
Sentinel-managed primary), not Redis Cluster.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from redis import Redis

from protocol import ErrorCode, ProtocolError
from settings import Settings

PREFIX = "factorial:quota:"
# Limits a refusal can name; the script returns these strings (or "requests_per_s").
CONNECTIONS = "connections"
IN_FLIGHT = "in_flight"

_SCRIPT = f"local prefix = '{PREFIX}'" + """
local p = cjson.decode(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local servers = prefix .. 'servers'
local me = p.server
local function client_key(c) return prefix .. 'client:' .. c end
local function members_key(s) return prefix .. 'server:' .. s end
local function renewed_key(s) return prefix .. 'renewed:' .. s end
-- TTLs, in leases: a server's members set outlives the client hashes it
-- renews (so a cleanup still finds their fields), and the list of leases
-- outlives every members set (so a cleanup still finds the server).
local client_ttl, members_ttl, servers_ttl = 3 * p.lease_ms, 4 * p.lease_ms, 5 * p.lease_ms

local function forget_server(s)
  for _, c in ipairs(redis.call('SMEMBERS', members_key(s))) do
    redis.call('HDEL', client_key(c), 'c:' .. s, 'f:' .. s)
  end
  redis.call('DEL', members_key(s), renewed_key(s))
  redis.call('ZREM', servers, s)
end

-- Servers whose lease ran out died without closing: their counts go.
for _, s in ipairs(redis.call('ZRANGEBYSCORE', servers, '-inf', now)) do
  if s ~= me then forget_server(s) end
end
if p.retire then
  forget_server(me)
  return {0}
end
local score = redis.call('ZSCORE', servers, me)
local lapsed = (not score) or tonumber(score) < now
redis.call('ZADD', servers, now + p.lease_ms, me)
redis.call('PEXPIRE', servers, servers_ttl)
-- Once per lease: the TTLs of the hashes of every client this server counts.
if redis.call('EXISTS', renewed_key(me)) == 0 then
  for _, c in ipairs(redis.call('SMEMBERS', members_key(me))) do
    redis.call('PEXPIRE', client_key(c), client_ttl)
  end
  redis.call('PEXPIRE', members_key(me), members_ttl)
  redis.call('SET', renewed_key(me), 1, 'PX', p.lease_ms)
end
local function counted(c)
  redis.call('SADD', members_key(me), c)
  redis.call('PEXPIRE', members_key(me), members_ttl)
  redis.call('PEXPIRE', client_key(c), client_ttl)
end

local function set_field(key, field, value)
  if value > 0 then redis.call('HSET', key, field, value) else redis.call('HDEL', key, field) end
end
-- This server's own counts, as it knows them.
for _, s in ipairs(p.sync) do
  local c, conns, flight = s[1], s[2], s[3]
  set_field(client_key(c), 'c:' .. me, conns)
  set_field(client_key(c), 'f:' .. me, flight)
  if conns > 0 or flight > 0 then
    counted(c)
  else
    redis.call('SREM', members_key(me), c)
  end
end

local function totals(c)
  local h = redis.call('HGETALL', client_key(c))
  local conns, flight = 0, 0
  for i = 1, #h, 2 do
    if string.sub(h[i], 1, 2) == 'c:' then conns = conns + tonumber(h[i + 1])
    else flight = flight + tonumber(h[i + 1]) end
  end
  return conns, flight
end

local reply = {lapsed and 1 or 0}
for _, a in ipairs(p.admit) do
  local c, kind, want = a[1], a[2], a[3]
  local conns, flight = totals(c)
  local room, limit = want, ''
  if kind == 'connection' then
    if p.max_connections > 0 and p.max_connections - conns < room then
      room, limit = math.max(0, p.max_connections - conns), 'connections'
    end
    if room > 0 then
      redis.call('HINCRBY', client_key(c), 'c:' .. me, room)
      counted(c)
    end
  else
    if p.max_in_flight > 0 and p.max_in_flight - flight < room then
      room, limit = math.max(0, p.max_in_flight - flight), 'in_flight'
    end
    if p.max_rate > 0 then
      local bucket = prefix .. 'rate:' .. c
      local b = redis.call('HMGET', bucket, 'tokens', 'at')
      local tokens = tonumber(b[1]) or p.max_rate
      local at = tonumber(b[2]) or now
      tokens = math.min(p.max_rate, tokens + math.max(0, now - at) * p.max_rate / 1000)
      if math.floor(tokens) < room then room, limit = math.floor(tokens), 'requests_per_s' end
      redis.call('HSET', bucket, 'tokens', tostring(tokens - room), 'at', now)
      -- After a second unused the bucket is full, which no key says as well.
      redis.call('PEXPIRE', bucket, 2000)
    end
    if room > 0 and p.max_in_flight > 0 then
      redis.call('HINCRBY', client_key(c), 'f:' .. me, room)
      counted(c)
    end
  end
  table.insert(reply, room)
  table.insert(reply, limit)
end
return reply
"""


@dataclass(frozen=True)
class Admission:
    """``count`` connections or requests (``kind``) that ``client`` asks to add."""

    client: str
    kind: str  # "connection" or "requests"
    count: int


@dataclass(frozen=True)
class Verdict:
    admitted: int  # the first this many of the admission's count are in
    limit: str  # the limit that refused the rest ("" when none did)


class QuotaStore:
    """One server process's side of the shared per-client counts. Blocking: call it off the IOLoop."""

    def __init__(self, redis: Redis, settings: Settings, server_id: str | None = None):
        self.redis = redis
        self.settings = settings
        self.server_id = server_id or uuid.uuid4().hex
        self._script = redis.register_script(_SCRIPT)

    @staticmethod
    def wanted(settings: Settings) -> bool:
        """Whether any per-client limit is set (0 means none)."""
        return bool(settings.client_max_connections or settings.client_max_in_flight
                    or settings.client_max_requests_per_s)

    @property
    def counts_requests(self) -> bool:
        return bool(self.settings.client_max_in_flight or self.settings.client_max_requests_per_s)

    @property
    def counts_connections(self) -> bool:
        return bool(self.settings.client_max_connections)

    def exchange(self, counts: dict[str, tuple[int, int]], admissions: list[Admission]) -> tuple[bool, list[Verdict]]:
        """Write this server's ``counts`` ({client: (connections, in flight)}), then decide ``admissions``.

        Returns whether this server's lease had lapsed (its counts may have
        been deleted meanwhile: send them all next time), and one verdict per
        admission, in order.
        """
        reply = self._script(args=[self._payload(counts, admissions, retire=False)])
        verdicts = [Verdict(int(reply[i]), _text(reply[i + 1])) for i in range(1, len(reply), 2)]
        return bool(reply[0]), verdicts

    def retire(self) -> None:
        """Take back every count of this server (it is shutting down)."""
        self._script(args=[self._payload({}, [], retire=True)])

    def _payload(self, counts, admissions, retire: bool) -> str:
        s = self.settings
        return json.dumps({
            "server": self.server_id,
            "lease_ms": int(s.client_lease_s * 1000),
            "max_connections": s.client_max_connections,
            "max_in_flight": s.client_max_in_flight,
            "max_rate": s.client_max_requests_per_s,
            # Lists, not objects: Lua's cjson cannot tell an empty object from an empty list.
            "sync": [[client, conns, flight] for client, (conns, flight) in counts.items()],
            "admit": [[a.client, a.kind, a.count] for a in admissions],
            "retire": retire,
        })


def refusal(limit: str, settings: Settings) -> ProtocolError:
    """The ``rate_limited`` error that names ``limit``."""
    if limit == CONNECTIONS:
        text = (f"too many connections: at most {settings.client_max_connections} open at once for one client, "
                "across all its connections and servers (CLIENT_MAX_CONNECTIONS)")
    elif limit == IN_FLIGHT:
        text = (f"too many requests in flight: at most {settings.client_max_in_flight} unanswered for one client, "
                "across all its connections and servers (CLIENT_MAX_IN_FLIGHT)")
    else:
        text = (f"too many requests: at most {settings.client_max_requests_per_s} per second for one client, "
                "across all its connections and servers (CLIENT_MAX_REQUESTS_PER_S)")
    return ProtocolError(ErrorCode.RATE_LIMITED, text)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
