"""Which budget buckets a call is charged to, and which ones exist to report.

Scopes: ``global``; ``caller:NAME`` for the caller's budget scope (``ctx.budget_scope``, else the
caller key's name) under the first ``budget.callers`` entry it matches; ``model:PATTERN`` for every
``budget.models`` entry that the model as called, or its ``provider/model`` target, matches (a glob
is one bucket shared by all it matches).  Each has a daily and/or a monthly bucket.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from ratatoskr_server.config import BudgetLimits, BudgetSettings
from ratatoskr_server.policy.budget.windows import Windows
from ratatoskr_server.state.budget import Bucket

GLOBAL = "global"
CALLER = "caller:"
MODEL = "model:"
_GLOB = frozenset("*?[")


class Scopes:
    def __init__(self, settings: BudgetSettings) -> None:
        self.settings = settings
        self.zone = ZoneInfo(settings.timezone)
        self._windows = Windows(self.zone)

    def _buckets(self, scope: str, daily: Decimal | None, monthly: Decimal | None, now: datetime) -> list[Bucket]:
        out = []
        if daily is not None:
            day = self._windows.day(now)
            out.append(Bucket(scope, day.name, daily, day.ends_at))
        if monthly is not None:
            month = self._windows.month(now)
            out.append(Bucket(scope, month.name, monthly, month.ends_at))
        return out

    def caller_limits(self, caller: str) -> BudgetLimits | None:
        if not caller:
            return None
        return next((v for k, v in self.settings.callers.items() if fnmatch.fnmatchcase(caller, k)), None)

    def for_call(self, names: Sequence[str], caller: str, now: datetime) -> list[Bucket]:
        """The buckets a call by ``caller`` to the model known by ``names`` is charged to."""
        s = self.settings
        buckets = self._buckets(GLOBAL, s.daily_usd, s.monthly_usd, now)
        limits = self.caller_limits(caller)
        if limits is not None:
            buckets += self._buckets(CALLER + caller, limits.daily_usd, limits.monthly_usd, now)
        for pattern, limits in s.models.items():
            if any(fnmatch.fnmatchcase(name, pattern) for name in names):
                buckets += self._buckets(MODEL + pattern, limits.daily_usd, limits.monthly_usd, now)
        return buckets

    def windows(self, now: datetime) -> list[str]:
        return [self._windows.day(now).name, self._windows.month(now).name]

    def all(self, now: datetime, seen: Iterable[str]) -> list[Bucket]:
        """Every bucket with a limit now: the configured scopes, and callers a glob matched that
        have spent or hold something in the current windows (``seen``)."""
        s = self.settings
        buckets = self._buckets(GLOBAL, s.daily_usd, s.monthly_usd, now)
        callers = {name for name in s.callers if not _GLOB & set(name)}
        callers |= {scope.removeprefix(CALLER) for scope in seen if scope.startswith(CALLER)}
        for caller in sorted(callers):
            limits = self.caller_limits(caller)
            if limits is not None:
                buckets += self._buckets(CALLER + caller, limits.daily_usd, limits.monthly_usd, now)
        for pattern, limits in s.models.items():
            buckets += self._buckets(MODEL + pattern, limits.daily_usd, limits.monthly_usd, now)
        return buckets
