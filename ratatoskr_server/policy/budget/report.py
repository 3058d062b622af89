"""What GetBudget and ``ratatoskr budget`` show: every budget in its current window."""

from __future__ import annotations

from datetime import datetime

from ratatoskr_client.errors import NotFound
from ratatoskr_client.types import BudgetStatus
from ratatoskr_server.config import BudgetSettings
from ratatoskr_server.policy.budget.scopes import Scopes
from ratatoskr_server.state.budget import BudgetLedger


async def budget_report(
    settings: BudgetSettings, ledger: BudgetLedger | None, now: datetime, scope: str = ""
) -> list[BudgetStatus]:
    """Each configured budget (and each caller a glob gave a budget of its own) with its limit,
    spent and reserved amounts and the end of its window; ``scope`` picks one scope's windows."""
    if not settings.enabled():
        if scope:
            raise NotFound(f"no budget is configured (budget scope {scope!r} asked for)")
        return []
    scopes = Scopes(settings)
    seen = await ledger.scopes(scopes.windows(now)) if ledger is not None else []
    buckets = scopes.all(now, seen)
    if scope:
        buckets = [b for b in buckets if b.scope == scope]
        if not buckets:
            raise NotFound(f"no budget scope {scope!r}; scopes look like global, caller:NAME, model:PATTERN")
    if ledger is None:
        return []
    states = await ledger.states(buckets, now=now.timestamp())
    return [
        BudgetStatus(
            scope=s.bucket.scope,
            window=s.bucket.window,
            limit_usd=s.bucket.limit,
            spent_usd=s.spent,
            reserved_usd=s.reserved,
            window_ends_at=s.bucket.ends_at.isoformat(),
        )
        for s in states
    ]
