"""Breaker verdicts and remembered parameter rejections shared through Redis.

Both are asked on every call, synchronously (``routing/breaker.py``, ``policy/params.py``), so a
round trip per call is not paid for them: each replica keeps deciding from its own memory, and what
changes is written to Redis at once (in the background) and read back every
``state.sync_interval_s``.  A breaker that opens on one replica is open on all within that
interval (with the cooldown counted from when it opened), a probe that closes it closes it
everywhere, and a parameter one replica saw refused is dropped by all.  Each replica counts the
failures that open a breaker from its own calls.

Times travel as Redis's clock (``TIME`` in the scripts): an open breaker is stored with the Redis
time it opened at, and each replica turns the age back into its own monotonic clock, so replicas'
clocks need not agree.

Keys, under ``state.key_prefix``: ``breakers`` (hash, key -> ``version|phase|opened_at_ms``),
``breakers:version``, ``params:rejected`` (sorted set, ``provider\\x1fmodel\\x1fparameter`` by
when the rejection is forgotten, in Redis milliseconds).  Redis unreachable: replicas decide
alone until it returns (a write that failed is not retried; the next transition is).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from ratatoskr_server.state.breakers import Circuit, MemoryBreakers, Phase
from ratatoskr_server.state.redis_conn import RedisState, StateUnavailable

log = logging.getLogger(__name__)

_SEP = "\x1f"

# KEYS: breakers, version.  ARGV: key, phase, age ms (open only).
_WRITE_BREAKER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], v..'|'..ARGV[2]..'|'..tostring(now - tonumber(ARGV[3])))
return v
"""

# KEYS: rejected.  ARGV: seconds, then members.
_WRITE_REJECTED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + math.floor(tonumber(ARGV[1]) * 1000), ARGV[i]) end
return 1
"""

# KEYS: breakers, rejected.  Returns {now ms, breakers flat, rejected flat with scores}.
_READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return {tostring(now), redis.call('HGETALL', KEYS[1]), redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')}
"""


class RejectionTarget(Protocol):
    """Where rejections other replicas saw are applied (``policy.params.ParameterGuard``)."""

    def learn(self, provider: str, model: str, parameter: str, seconds: float) -> None:
        """Count ``parameter`` unsupported on ``provider``/``model`` for ``seconds`` more."""


class SharedVerdicts(MemoryBreakers):
    """The breaker store of a replica (decisions from memory) that shares its transitions, and the
    channel for parameter rejections; ``sync`` reads both back."""

    def __init__(
        self,
        state: RedisState,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.state = state
        self.monotonic = monotonic
        self._breakers = f"{state.prefix}breakers"
        self._version = f"{state.prefix}breakers:version"
        self._rejected = f"{state.prefix}params:rejected"
        self._write_breaker = state.client.register_script(_WRITE_BREAKER)
        self._write_rejected = state.client.register_script(_WRITE_REJECTED)
        self._read = state.client.register_script(_READ)
        #: Last version applied or written per breaker key.
        self._seen: dict[str, int] = {}
        self.target: RejectionTarget | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    # -- writing -------------------------------------------------------------------------------------
    def _spawn(self, work: Callable[[], object]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous test of the breaker logic): nothing to share with
        task = loop.create_task(self._write(work))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, work: Callable[[], object]) -> None:
        with contextlib.suppress(StateUnavailable):
            await self.state.call("breakers", work)  # type: ignore[arg-type]

    def entered(self, key: str, circuit: Circuit) -> None:
        if circuit.phase is Phase.HALF_OPEN:
            return  # each replica half-opens by itself once the shared cooldown has passed
        age_ms = max(int((self.monotonic() - circuit.opened_at) * 1000), 0) if circuit.phase is Phase.OPEN else 0
        args: list[str | int] = [key, circuit.phase.value, age_ms]

        async def write() -> None:
            version = int(await self._write_breaker(keys=[self._breakers, self._version], args=args))
            self._seen[key] = max(self._seen.get(key, 0), version)

        self._spawn(write)

    def rejected(self, provider: str, model: str, parameters: Iterable[str], seconds: float) -> None:
        """Share parameters an upstream refused for ``seconds``."""
        members = [_SEP.join((provider, model, name)) for name in parameters]
        if members:
            args: list[str | float] = [seconds, *members]
            self._spawn(lambda: self._write_rejected(keys=[self._rejected], args=args))

    async def flush(self) -> None:
        """Wait for the writes under way (tests; shutdown)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    # -- reading back --------------------------------------------------------------------------------
    async def sync(self) -> None:
        """Apply what other replicas wrote; raises :class:`StateUnavailable` when Redis is away."""
        reply = await self.state.call("breakers", lambda: self._read(keys=[self._breakers, self._rejected]))
        redis_now = int(reply[0])
        local_now = self.monotonic()
        fields = reply[1]
        for i in range(0, len(fields), 2):
            key = fields[i].decode()
            version, phase, opened_ms = fields[i + 1].decode().split("|")
            if int(version) <= self._seen.get(key, 0):
                continue
            self._seen[key] = int(version)
            self._apply(key, Phase(phase), local_now - (redis_now - int(opened_ms)) / 1000)
        if self.target is not None:
            rejected = reply[2]
            for i in range(0, len(rejected), 2):
                provider, model, name = rejected[i].decode().split(_SEP)
                self.target.learn(provider, model, name, (float(rejected[i + 1]) - redis_now) / 1000)

    def _apply(self, key: str, phase: Phase, opened_at: float) -> None:
        circuit = self.circuit(key)
        if phase is Phase.OPEN:
            circuit.opened_at = opened_at
            circuit.probing = 0
        elif circuit.phase is Phase.CLOSED:
            return
        circuit.outcomes.clear()
        circuit.failures = 0
        circuit.phase = phase
        log.info("circuit breaker verdict from another replica", extra={"target": key, "phase": phase.value})

    async def _run(self, interval_s: float) -> None:
        while True:
            with contextlib.suppress(StateUnavailable):
                await self.sync()
            await asyncio.sleep(interval_s)

    def start(self) -> None:
        """Read back every ``state.sync_interval_s`` until ``close``."""
        if self._loop_task is None:
            interval = self.state.settings.sync_interval_s
            self._loop_task = asyncio.get_running_loop().create_task(self._run(interval))

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        await self.flush()
