"""The budget ledger in memory: for tests and embedded use where spend need not survive the process.

Every method runs without awaiting between its reads and writes, so on one event loop it is as
atomic as the SQLite ledger's transactions.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from decimal import Decimal

from ratatoskr_server.state.budget import Bucket, BucketState, Refusal, Reservation, from_nanos, to_nanos


class MemoryBudgetLedger:
    def __init__(self) -> None:
        self._spent: dict[tuple[str, str], int] = {}
        #: reservation id -> (nanos, expires_at, bucket keys)
        self._held: dict[int, tuple[int, float, tuple[tuple[str, str], ...]]] = {}
        self._ids = itertools.count(1)

    def _reserved(self, key: tuple[str, str], now: float) -> int:
        return sum(n for n, expires, keys in self._held.values() if expires > now and key in keys)

    def _state(self, bucket: Bucket, now: float) -> BucketState:
        spent = self._spent.get(bucket.key, 0)
        return BucketState(bucket, from_nanos(spent), from_nanos(self._reserved(bucket.key, now)))

    async def reserve(
        self, buckets: Sequence[Bucket], amount: Decimal, *, now: float, expires_at: float
    ) -> Reservation | Refusal:
        nanos = to_nanos(amount)
        levels = []
        for bucket in buckets:
            state = self._state(bucket, now)
            if to_nanos(state.spent + state.reserved) + nanos > to_nanos(bucket.limit):
                return Refusal(state, amount)
            levels.append(BucketState(bucket, state.spent, state.reserved + from_nanos(nanos)))
        rid = next(self._ids)
        self._held[rid] = (nanos, expires_at, tuple(b.key for b in buckets))
        return Reservation(rid, amount, tuple(buckets), tuple(levels))

    def settle(self, reservation: Reservation, actual: Decimal) -> asyncio.Future[None]:
        self._held.pop(reservation.id, None)
        nanos = to_nanos(actual)
        for bucket in reservation.buckets:
            self._spent[bucket.key] = self._spent.get(bucket.key, 0) + nanos
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stored.set_result(None)
        return stored

    async def expire(self, now: float) -> int:
        gone = [rid for rid, (_, expires, _) in self._held.items() if expires <= now]
        for rid in gone:
            del self._held[rid]
        return len(gone)

    async def states(self, buckets: Sequence[Bucket], *, now: float) -> list[BucketState]:
        return [self._state(b, now) for b in buckets]

    async def scopes(self, windows: Sequence[str]) -> list[str]:
        wanted = set(windows)
        keys = set(self._spent) | {k for _, _, ks in self._held.values() for k in ks}
        return sorted({scope for scope, window in keys if window in wanted})

    async def close(self) -> None:
        return None
