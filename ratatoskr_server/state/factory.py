"""The stores a configuration asks for: built once per process and kept across reloads.

``state.backend = "sqlite"`` (the default) keeps everything in this process: the budget ledger as
``budget.ledger`` says, rates, cache and breakers in memory.  ``"redis"`` puts all of them in one
Redis that every replica shares (:class:`SharedState`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ratatoskr_server.config import BudgetSettings, Settings
from ratatoskr_server.state.budget import BudgetLedger
from ratatoskr_server.state.memory import MemoryBudgetLedger
from ratatoskr_server.state.sqlite import SqliteBudgetLedger
from ratatoskr_server.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from ratatoskr_server.state.redis_budget import RedisBudgetLedger
    from ratatoskr_server.state.redis_cache import RedisResponseCache
    from ratatoskr_server.state.redis_conn import RedisState
    from ratatoskr_server.state.redis_rates import RedisRates
    from ratatoskr_server.state.redis_sync import SharedVerdicts


def budget_ledger(settings: BudgetSettings) -> BudgetLedger:
    if settings.ledger == "memory":
        return MemoryBudgetLedger()
    return SqliteBudgetLedger(settings.ledger_path.expanduser())


@dataclass(slots=True)
class SharedState:
    """Every store of one process in Redis, over one connection pool."""

    redis: RedisState
    ledger: RedisBudgetLedger
    rates: RedisRates
    cache: RedisResponseCache
    #: Breaker store (decisions in memory, transitions shared) and the parameter-rejection channel.
    verdicts: SharedVerdicts

    def start(self) -> None:
        """Begin reading back other replicas' verdicts (needs the running loop)."""
        self.verdicts.start()

    async def close(self) -> None:
        await self.verdicts.close()
        await self.ledger.close()
        await self.redis.close()


def shared_state(
    settings: Settings, metrics: Metrics | None = None, *, monotonic: Callable[[], float] = time.monotonic
) -> SharedState | None:
    """The Redis stores when ``state.backend = "redis"``; None for the in-process ones.  Nothing
    connects here: the first command does (so a replica starts while Redis is still coming up)."""
    if settings.state.backend != "redis":
        return None
    # redis-py loads only for a daemon that uses it: it is a fifth of a cold start otherwise.
    from ratatoskr_server.state.redis_budget import RedisBudgetLedger
    from ratatoskr_server.state.redis_cache import RedisResponseCache
    from ratatoskr_server.state.redis_conn import RedisState
    from ratatoskr_server.state.redis_rates import RedisRates
    from ratatoskr_server.state.redis_sync import SharedVerdicts

    redis = RedisState(settings.state, metrics)
    return SharedState(
        redis=redis,
        ledger=RedisBudgetLedger(redis, reservation_ttl_s=settings.budget.reservation_ttl_s),
        rates=RedisRates(redis),
        cache=RedisResponseCache(redis, ttl_s=settings.cache.ttl_s, max_bytes=int(settings.cache.max_mb * 1024 * 1024)),
        verdicts=SharedVerdicts(redis, monotonic=monotonic),
    )
