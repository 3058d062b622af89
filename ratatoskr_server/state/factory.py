"""The ledger a configuration asks for: built once per process and kept across reloads."""

from __future__ import annotations

from ratatoskr_server.config import BudgetSettings
from ratatoskr_server.state.budget import BudgetLedger
from ratatoskr_server.state.memory import MemoryBudgetLedger
from ratatoskr_server.state.sqlite import SqliteBudgetLedger


def budget_ledger(settings: BudgetSettings) -> BudgetLedger:
    if settings.ledger == "memory":
        return MemoryBudgetLedger()
    return SqliteBudgetLedger(settings.ledger_path.expanduser())
