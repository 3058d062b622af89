"""The budget ledger's protocol and its value types: what the budget stage asks of any backend.

A call touches several buckets at once (the global day, its caller's day and month, its model's
day …).  ``reserve`` holds an amount against all of them or none, atomically, so two calls racing
for the last dollar cannot both pass; ``settle`` turns a reservation into what the call really
cost; reservations carry an expiry, so those of a daemon that died before settling lapse instead
of blocking the budget forever.  Amounts are :class:`~decimal.Decimal` USD; each backend stores
them exactly (SQLite: integer nano-dollars).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, Decimal
from typing import Protocol

#: The ledger's unit: a billionth of a dollar.  Prices are USD per million tokens with a few
#: decimals, so one token's cost is exact in nano-dollars for any price given to three decimals.
NANO = Decimal("1e-9")


def to_nanos(amount: Decimal) -> int:
    """``amount`` USD in whole nano-dollars, rounded up (a ledger never under-counts a charge)."""
    return int((amount / NANO).to_integral_value(rounding=ROUND_CEILING))


def from_nanos(nanos: int) -> Decimal:
    return (Decimal(nanos) * NANO).normalize() if nanos else Decimal(0)


@dataclass(frozen=True, slots=True)
class Bucket:
    """One limit in one window: ``scope`` (``global``, ``caller:NAME``, ``model:PATTERN``) and
    ``window`` (``day:2026-12-02``, ``month:2026-12``) name the row; spending is counted per row."""

    scope: str
    window: str
    limit: Decimal
    #: When the window ends (aware datetime): a refusal's retry-after, GetBudget's window end.
    ends_at: datetime

    @property
    def key(self) -> tuple[str, str]:
        return (self.scope, self.window)


@dataclass(frozen=True, slots=True)
class BucketState:
    bucket: Bucket
    spent: Decimal
    reserved: Decimal


@dataclass(frozen=True, slots=True)
class Reservation:
    id: int
    amount: Decimal
    buckets: tuple[Bucket, ...]
    #: Each bucket as it stands with this reservation held: what a warning is decided on.
    levels: tuple[BucketState, ...] = ()


@dataclass(frozen=True, slots=True)
class Refusal:
    """The first bucket the amount would not fit in, with its numbers at that moment."""

    state: BucketState
    amount: Decimal


class BudgetLedger(Protocol):
    async def reserve(
        self, buckets: Sequence[Bucket], amount: Decimal, *, now: float, expires_at: float
    ) -> Reservation | Refusal:
        """Hold ``amount`` against every bucket, or refuse without holding anything.

        ``now`` and ``expires_at`` are epoch seconds: reservations that expired by ``now`` no longer
        count; this one lapses at ``expires_at`` unless settled.
        """
        ...

    def settle(self, reservation: Reservation, actual: Decimal) -> asyncio.Future[None]:
        """Release the reservation and charge ``actual`` to its buckets (even past a limit: the
        money is spent; the reservation made that rare).

        Taken in order at the call: every later call on this ledger (a reserve, a budget report)
        sees it. The returned future is done once it is stored, and it completes whether or not
        anyone awaits it: the budget stage does not, so an answer never waits for the ledger's commit,
        while the reservation keeps covering the call until then (nothing can be overspent in the
        meantime). A failure is the future's exception; ``close`` waits for the settles under way."""
        ...

    async def expire(self, now: float) -> int:
        """Drop reservations that lapsed by ``now``; how many."""
        ...

    async def states(self, buckets: Sequence[Bucket], *, now: float) -> list[BucketState]:
        """Spent and (live) reserved amounts of each bucket, in order."""
        ...

    async def scopes(self, windows: Sequence[str]) -> list[str]:
        """Scopes with anything spent or held in any of ``windows`` (per-caller scopes made by a glob)."""
        ...

    async def close(self) -> None: ...
