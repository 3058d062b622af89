"""Per-caller rpm/tpm windows in Redis: one limit for every replica, each admit one Lua script.

The script trims the window, checks and counts in one step, so replicas racing for the last call of
a minute cannot both pass.  Time is Redis's own clock (``TIME`` inside the script), so replicas with
skewed clocks still share one window; tests may inject a clock (epoch seconds) instead.

Keys, under ``state.key_prefix`` + ``rate:<caller>:``: ``calls`` (sorted set of admitted calls by
time), ``tokens`` (sorted set of ``seq:tokens`` by time), ``tokens:sum`` (their running sum) and
``seq``; each expires a minute after its last write.  Redis unreachable: a rate-limited caller is
refused (UNAVAILABLE); its tokens are not counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ratatoskr_client.errors import Unavailable
from ratatoskr_server.state.rates import WINDOW_S, Limited
from ratatoskr_server.state.redis_conn import RedisState, StateUnavailable

log = logging.getLogger(__name__)

_NOW = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local window = tonumber(ARGV[2])
local horizon = now - window
local ttl = math.ceil(window * 1000) + 1000
-- Tokens leave the window with their entries; their running sum (KEYS[4]) follows.
local function trim_tokens(tokens, sum)
  local gone = redis.call('ZRANGEBYSCORE', tokens, '-inf', horizon)
  if #gone > 0 then
    local n = 0
    for _, e in ipairs(gone) do n = n + tonumber(string.match(e, ':(%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', tokens, '-inf', horizon)
    redis.call('DECRBY', sum, n)
  end
  return tonumber(redis.call('GET', sum) or '0')
end
"""

# KEYS: calls, tokens, seq, token sum.  ARGV: now ('' = Redis TIME), window, rpm (-1: none), tpm (-1: none).
# Returns false when admitted (and counted), else {limit, seconds until the window lets one through}.
_ADMIT = (
    _NOW
    + """
local rpm, tpm = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', horizon)
if rpm >= 0 then
  local n = redis.call('ZCARD', KEYS[1])
  if n >= rpm then
    if rpm == 0 then return {'rpm', tostring(window)} end
    local e = redis.call('ZRANGE', KEYS[1], -rpm, -rpm, 'WITHSCORES')
    return {'rpm', tostring(tonumber(e[2]) + window - now)}
  end
end
if tpm >= 0 then
  local sum = trim_tokens(KEYS[2], KEYS[4])
  if sum >= tpm then
    local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    local remaining = sum
    for i = 1, #entries, 2 do
      remaining = remaining - tonumber(string.match(entries[i], ':(%d+)$'))
      if remaining < tpm then return {'tpm', tostring(tonumber(entries[i + 1]) + window - now)} end
    end
    return {'tpm', tostring(window)}
  end
end
redis.call('ZADD', KEYS[1], now, redis.call('INCR', KEYS[3]))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return false
"""
)

# KEYS: tokens, seq, token sum.  ARGV: now, window, tokens.
_TOKENS = (
    _NOW
    + """
trim_tokens(KEYS[1], KEYS[3])
redis.call('ZADD', KEYS[1], now, redis.call('INCR', KEYS[2])..':'..ARGV[3])
redis.call('INCRBY', KEYS[3], ARGV[3])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
return 1
"""
)


class RedisRates:
    def __init__(self, state: RedisState, clock: Callable[[], float] | None = None, window_s: float = WINDOW_S) -> None:
        self.state = state
        #: Epoch seconds for the windows; None: Redis's clock, the one every replica shares.
        self.clock = clock
        self.window_s = window_s
        self._admit = state.client.register_script(_ADMIT)
        self._tokens = state.client.register_script(_TOKENS)

    def _keys(self, key: str) -> tuple[str, str, str, str]:
        base = f"{self.state.prefix}rate:{key}:"
        return f"{base}calls", f"{base}tokens", f"{base}seq", f"{base}tokens:sum"

    def _now(self) -> str:
        return "" if self.clock is None else repr(self.clock())

    async def admit(self, key: str, *, rpm: int | None, tpm: int | None) -> Limited | None:
        args: list[str | int] = [
            self._now(),
            repr(self.window_s),
            -1 if rpm is None else rpm,
            -1 if tpm is None else tpm,
        ]
        try:
            reply = await self.state.call("rates", lambda: self._admit(keys=self._keys(key), args=args))
        except StateUnavailable as err:
            raise Unavailable(
                f"{err}; the rate limits of caller {key!r} cannot be checked, so its calls are refused until it "
                "returns",
                retry_after_s=self.state.settings.retry_after_s,
            ) from None
        if reply is None:
            return None
        limit, seconds = reply
        return Limited(limit.decode(), max(float(seconds), 0.0))

    async def record_tokens(self, key: str, tokens: int) -> None:
        if tokens <= 0:
            return
        _, token_key, seq, token_sum = self._keys(key)
        args: list[str | int] = [self._now(), repr(self.window_s), tokens]
        try:
            await self.state.call("rates", lambda: self._tokens(keys=[token_key, seq, token_sum], args=args))
        except StateUnavailable as err:
            log.warning("tokens not counted against tpm: shared state unreachable", extra={"reason": str(err)})
