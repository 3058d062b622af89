"""The budget ledger in Redis: one budget for every replica, reserved and settled by Lua scripts.

A reserve is one script: it drops lapsed reservations, checks every bucket the call touches and
holds the amount in all of them, or in none; Redis runs a script alone, so two replicas racing for
the last dollar cannot both pass (no check-then-increment).  Amounts are integer nano-dollars, as
in the SQLite ledger (``HINCRBY`` is exact; Lua compares them as doubles, exact below 2**53 nanos,
about nine million dollars per bucket).

Keys, under ``state.key_prefix`` + ``budget:``: ``spent`` and ``reserved`` (hashes, bucket ->
nanos), ``held`` (reservation -> amount and buckets), ``expiry`` (sorted set, reservation by when
it lapses), ``ids``, ``scopes:<window>`` (scopes seen in a window, for GetBudget) and
``settled:<id>`` (marks a settle done, so a settle retried after a lost reply charges once).

Redis unreachable: a reserve refuses with UNAVAILABLE (``state.budget_when_unavailable =
"refuse"``, the default) or lets the call through unmetered with a warning ("allow"); a settle that
cannot reach Redis is kept and retried before the next reserve (the settle script is idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Sequence
from decimal import Decimal

from ratatoskr_client.errors import Unavailable
from ratatoskr_server.state.budget import Bucket, BucketState, Refusal, Reservation, from_nanos, to_nanos
from ratatoskr_server.state.redis_conn import RedisState, StateUnavailable

log = logging.getLogger(__name__)

_BUCKET_SEP = "\x1f"  # between a bucket's scope and window
_LIST_SEP = "\x1e"  # between the parts of a held reservation
#: Settles kept while Redis is away; beyond this the oldest are given up (and logged).
_MAX_PENDING = 10_000

_COMMON = """
local p = ARGV[1]
local spent_k, reserved_k, held_k, expiry_k = p..'spent', p..'reserved', p..'held', p..'expiry'
local function release(rid)
  local held = redis.call('HGET', held_k, rid)
  redis.call('ZREM', expiry_k, rid)
  if not held then return 0 end
  redis.call('HDEL', held_k, rid)
  local amount = nil
  for part in string.gmatch(held, '[^\\30]+') do
    if amount == nil then
      amount = part
    else
      if redis.call('HINCRBY', reserved_k, part, '-'..amount) <= 0 then redis.call('HDEL', reserved_k, part) end
    end
  end
  return 1
end
local function sweep(now)
  local lapsed = redis.call('ZRANGEBYSCORE', expiry_k, '-inf', now)
  for _, rid in ipairs(lapsed) do release(rid) end
  return #lapsed
end
local function note_scope(b)
  local at = string.find(b, '\\31', 1, true)
  redis.call('SADD', p..'scopes:'..string.sub(b, at + 1), string.sub(b, 1, at - 1))
end
"""

# ARGV: prefix, now, expires_at, nanos, n, then n pairs (bucket, limit nanos).
# Returns {1, id, spent1, reserved1, ...} or {0, i, spent_i, reserved_i} for the first bucket that has no room.
_RESERVE = (
    _COMMON
    + """
local now, expires, nanos, n = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
sweep(now)
local out = {1, 0}
local buckets = {}
for i = 1, n do
  local b, limit = ARGV[4 + 2 * i], tonumber(ARGV[5 + 2 * i])
  local spent = redis.call('HGET', spent_k, b) or '0'
  local reserved = redis.call('HGET', reserved_k, b) or '0'
  if tonumber(spent) + tonumber(reserved) + tonumber(nanos) > limit then return {0, i, spent, reserved} end
  out[#out + 1] = spent
  out[#out + 1] = reserved
  buckets[i] = b
end
local rid = redis.call('INCR', p..'ids')
out[2] = rid
for _, b in ipairs(buckets) do
  redis.call('HINCRBY', reserved_k, b, nanos)
  note_scope(b)
end
redis.call('HSET', held_k, rid, nanos..'\\30'..table.concat(buckets, '\\30'))
redis.call('ZADD', expiry_k, expires, rid)
return out
"""
)

# ARGV: prefix, id, actual nanos, marker ttl (s), then the buckets.  Returns 0 when already settled.
_SETTLE = (
    _COMMON
    + """
local rid, actual = ARGV[2], ARGV[3]
if not redis.call('SET', p..'settled:'..rid, '1', 'NX', 'EX', ARGV[4]) then return 0 end
release(rid)
if actual ~= '0' then
  for i = 5, #ARGV do
    redis.call('HINCRBY', spent_k, ARGV[i], actual)
    note_scope(ARGV[i])
  end
end
return 1
"""
)

# ARGV: prefix, now, then buckets.  Returns spent1, reserved1, ... (live reservations only).
_STATES = (
    _COMMON
    + """
sweep(ARGV[2])
local out = {}
for i = 3, #ARGV do
  out[#out + 1] = redis.call('HGET', spent_k, ARGV[i]) or '0'
  out[#out + 1] = redis.call('HGET', reserved_k, ARGV[i]) or '0'
end
return out
"""
)

_EXPIRE = _COMMON + "\nreturn sweep(ARGV[2])\n"


def _field(bucket: Bucket) -> str:
    return f"{bucket.scope}{_BUCKET_SEP}{bucket.window}"


class RedisBudgetLedger:
    def __init__(self, state: RedisState, *, reservation_ttl_s: float) -> None:
        self.state = state
        self.keys = f"{state.prefix}budget:"
        #: How long a settle's marker lives: longer than any reservation, so a retried settle is seen.
        self.marker_ttl_s = int(reservation_ttl_s * 2) + 60
        self.allow_when_unavailable = state.settings.budget_when_unavailable == "allow"
        client = state.client
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._states = client.register_script(_STATES)
        self._expire = client.register_script(_EXPIRE)
        #: Settles that could not reach Redis: (reservation, actual nanos), retried in order.
        self._pending: deque[tuple[Reservation, int]] = deque()
        #: Settles on their way to Redis (each a task of its own: answers do not wait for them).
        self._settling: set[asyncio.Future[None]] = set()

    # -- reserve -------------------------------------------------------------------------------------
    async def reserve(
        self, buckets: Sequence[Bucket], amount: Decimal, *, now: float, expires_at: float
    ) -> Reservation | Refusal:
        nanos = to_nanos(amount)
        args: list[str | int | float] = [self.keys, repr(now), repr(expires_at), nanos, len(buckets)]
        for bucket in buckets:
            args += [_field(bucket), to_nanos(bucket.limit)]
        try:
            await self._flush_pending()
            reply = await self.state.call("budget", lambda: self._reserve(args=args))
        except StateUnavailable as err:
            return self._unavailable(buckets, amount, str(err))
        if int(reply[0]) == 0:
            i = int(reply[1]) - 1
            state = BucketState(buckets[i], from_nanos(int(reply[2])), from_nanos(int(reply[3])))
            return Refusal(state, amount)
        numbers = [int(x) for x in reply[2:]]
        levels = tuple(
            BucketState(b, from_nanos(numbers[2 * i]), from_nanos(numbers[2 * i + 1] + nanos))
            for i, b in enumerate(buckets)
        )
        return Reservation(int(reply[1]), amount, tuple(buckets), levels)

    def _unavailable(self, buckets: Sequence[Bucket], amount: Decimal, reason: str) -> Reservation:
        if not self.allow_when_unavailable:
            raise Unavailable(
                f"{reason}; paid calls under a budget are refused until it returns, so no replica can overspend "
                '(state.budget_when_unavailable = "allow" lets them through unmetered)',
                retry_after_s=self.state.settings.retry_after_s,
            )
        log.warning(
            "budget not enforced: shared state unreachable; this call goes through unmetered and is charged "
            "once Redis is back (state.budget_when_unavailable = allow)",
            extra={"reason": reason},
        )
        # A negative id is never a held reservation; random, so replicas' settle markers cannot collide.
        return Reservation(-secrets.randbits(62) - 1, amount, tuple(buckets))

    # -- settle --------------------------------------------------------------------------------------
    async def _settle_one(self, reservation: Reservation, nanos: int) -> None:
        args: list[str | int] = [self.keys, reservation.id, nanos, self.marker_ttl_s]
        args += [_field(b) for b in reservation.buckets]
        await self.state.call("budget", lambda: self._settle(args=args))

    def settle(self, reservation: Reservation, actual: Decimal) -> asyncio.Future[None]:
        # A task of its own: it completes however the request that settles ends; close() waits for it.
        task = asyncio.ensure_future(self._settle_or_keep(reservation, to_nanos(actual)))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return task

    async def _settle_or_keep(self, reservation: Reservation, nanos: int) -> None:
        try:
            await self._settle_one(reservation, nanos)
        except StateUnavailable as err:
            self._keep(reservation, nanos, str(err))

    def _keep(self, reservation: Reservation, nanos: int, reason: str) -> None:
        if len(self._pending) >= _MAX_PENDING:
            lost, _ = self._pending.popleft()
            log.error("budget settle given up: too many waiting for Redis", extra={"reservation": lost.id})
        self._pending.append((reservation, nanos))
        log.warning(
            "budget settle waits for Redis; it is retried before the next reserve",
            extra={"reason": reason, "waiting": len(self._pending)},
        )

    async def _flush_pending(self) -> None:
        while self._pending:
            reservation, nanos = self._pending[0]
            await self._settle_one(reservation, nanos)  # raises StateUnavailable: keep the rest
            self._pending.popleft()

    # -- reading -------------------------------------------------------------------------------------
    async def expire(self, now: float) -> int:
        reply = await self.state.call("budget", lambda: self._expire(args=[self.keys, repr(now)]))
        return int(reply)

    async def states(self, buckets: Sequence[Bucket], *, now: float) -> list[BucketState]:
        if not buckets:
            return []
        args = [self.keys, repr(now), *(_field(b) for b in buckets)]
        try:
            reply = await self.state.call("budget", lambda: self._states(args=args))
        except StateUnavailable as err:
            raise Unavailable(f"{err}; budget figures cannot be read until it returns") from None
        numbers = [int(x) for x in reply]
        return [
            BucketState(b, from_nanos(numbers[2 * i]), from_nanos(numbers[2 * i + 1])) for i, b in enumerate(buckets)
        ]

    async def scopes(self, windows: Sequence[str]) -> list[str]:
        if not windows:
            return []
        names = [f"{self.keys}scopes:{w}" for w in windows]
        try:
            members = await self.state.call("budget", lambda: self.state.client.sunion(names))
        except StateUnavailable as err:
            raise Unavailable(f"{err}; budget figures cannot be read until it returns") from None
        return sorted(m.decode() if isinstance(m, bytes) else m for m in members)

    @property
    def pending(self) -> int:
        """Settles waiting for Redis to come back."""
        return len(self._pending)

    async def close(self) -> None:
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        if self._pending:
            try:
                await self._flush_pending()
            except StateUnavailable:
                log.error("budget settles lost at shutdown: Redis unreachable", extra={"waiting": len(self._pending)})
