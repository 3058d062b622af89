"""The response cache in Redis: an answer one replica computed is a hit on every other.

Entries are plain keys with a TTL (``PX``), read with one ``MGET``.  The byte bound
(``cache.max_mb``, over all replicas together) is kept by the put script: an index of entries by
expiry and their sizes; lapsed ones are forgotten first, then the oldest are evicted until the new
ones fit (the TTL is one for all, so the soonest to expire is the oldest written).  Redis's own
``maxmemory`` stays a backstop.

Redis unreachable: a get is a miss and a put is skipped; the caller gets its answer computed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ratatoskr_server.state.cache import ENTRY_OVERHEAD
from ratatoskr_server.state.redis_conn import RedisState, StateUnavailable

log = logging.getLogger(__name__)

# KEYS: index (sorted set key -> expiry ms), sizes (hash), bytes (counter).
# ARGV: entry key prefix, ttl ms, max bytes, overhead, then key, value pairs.  Returns evictions.
_PUT = """
local index, sizes, total = KEYS[1], KEYS[2], KEYS[3]
local entry, ttl, max, overhead = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function forget(k)
  local size = redis.call('HGET', sizes, k)
  if size then
    redis.call('DECRBY', total, size)
    redis.call('HDEL', sizes, k)
  end
  redis.call('ZREM', index, k)
end
for _, k in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now)) do forget(k) end
local evicted = 0
for i = 5, #ARGV, 2 do
  local k, v = ARGV[i], ARGV[i + 1]
  local size = #k + #v + overhead
  if size <= max then
    forget(k)
    while tonumber(redis.call('GET', total) or '0') + size > max do
      local oldest = redis.call('ZRANGE', index, 0, 0)
      if #oldest == 0 then break end
      forget(oldest[1])
      redis.call('DEL', entry..oldest[1])
      evicted = evicted + 1
    end
    redis.call('SET', entry..k, v, 'PX', ttl)
    redis.call('ZADD', index, now + ttl, k)
    redis.call('HSET', sizes, k, size)
    redis.call('INCRBY', total, size)
  end
end
return evicted
"""

# KEYS: index, sizes, bytes.  ARGV: entry key prefix.
_CLEAR = """
for _, k in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do redis.call('DEL', ARGV[1]..k) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1
"""


class RedisResponseCache:
    def __init__(self, state: RedisState, *, ttl_s: float, max_bytes: int) -> None:
        self.state = state
        self.ttl_ms = max(int(ttl_s * 1000), 1)
        self.max_bytes = max_bytes
        base = f"{state.prefix}cache:"
        self.entry = f"{base}e:"
        self.meta = [f"{base}index", f"{base}sizes", f"{base}bytes"]
        self._put = state.client.register_script(_PUT)
        self._clear = state.client.register_script(_CLEAR)
        self.evictions = 0

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        names = [self.entry + k for k in keys]
        try:
            values = await self.state.call("cache", lambda: self.state.client.mget(names))
        except StateUnavailable:
            return [None] * len(keys)  # a miss: the answer is computed instead
        return [v if isinstance(v, bytes) else None for v in values]

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        if not items:
            return
        args: list[str | int | bytes] = [self.entry, self.ttl_ms, self.max_bytes, ENTRY_OVERHEAD]
        for key, value in items:
            args += [key, value]
        try:
            self.evictions += int(await self.state.call("cache", lambda: self._put(keys=self.meta, args=args)))
        except StateUnavailable:
            return  # not kept; the next identical request computes it again

    async def clear(self) -> None:
        await self.state.call("cache", lambda: self._clear(keys=self.meta, args=[self.entry]))
