"""``ratatoskr status --watch``: a live view of a running daemon, redrawn every few seconds.

One frame is one ``Snapshot`` (Status and GetBudget, asked together) drawn by ``render``; the loop
(``watch``) only fetches and redraws, so a test can draw a real daemon's snapshot into a string.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ratatoskr_client.errors import RatatoskrError
from ratatoskr_client.types import BudgetStatus, ServerStatus
from ratatoskr_server.terminal.tree import BREAKER_STYLE


@dataclass(frozen=True, slots=True)
class Snapshot:
    status: ServerStatus
    budgets: list[BudgetStatus] = field(default_factory=list)


def _header(status: ServerStatus) -> Text:
    text = Text(f"ratatoskr {status.version}", style="bold")
    text.append(f"  pid {status.pid}  ")
    text.append(status.state, style="green" if status.state == "serving" else "yellow")
    text.append(f"  up {status.uptime_s:.0f}s  in flight ")
    busy = status.in_flight >= status.max_in_flight
    text.append(f"{status.in_flight}/{status.max_in_flight}", style="bold red" if busy else "bold")
    text.append(f"\nlistening: {', '.join(status.listen)}", style="dim")
    return text


def _models(status: ServerStatus) -> Table:
    table = Table(title="models", title_justify="left", expand=True)
    for column in ("model", "state", "device"):
        table.add_column(column)
    for column in ("memory MB", "in flight", "requests", "idle s", "queued", "batch mean/max"):
        table.add_column(column, justify="right")
    for m in status.models:
        state_style = "green" if m.state == "ready" else "yellow"
        table.add_row(
            m.name + (" (pinned)" if m.pinned else ""),
            Text(m.state, style=state_style),
            m.device,
            f"{m.memory_mb:.1f}",
            str(m.in_flight),
            str(m.requests),
            f"{m.idle_s:.0f}",
            Text(str(m.queued), style="bold yellow" if m.queued else ""),
            f"{m.mean_batch_size:.1f}/{m.largest_batch}" if m.largest_batch else "-",
        )
    if not status.models:
        table.add_row(Text("none loaded", style="dim"), "", "", "", "", "", "", "", "")
    return table


def _providers(status: ServerStatus) -> Table:
    table = Table(title="providers (circuit breakers)", title_justify="left", expand=True)
    table.add_column("provider/model")
    table.add_column("breaker")
    for key, phase in sorted(status.breakers.items()):
        table.add_row(key, Text(phase, style=BREAKER_STYLE.get(phase, "")))
    if not status.breakers:
        table.add_row(Text("no provider called yet", style="dim"), "")
    return table


def _budgets(budgets: list[BudgetStatus]) -> Table:
    table = Table(title="budgets", title_justify="left", expand=True)
    table.add_column("scope")
    table.add_column("window")
    for column in ("spent", "reserved", "limit", "used"):
        table.add_column(column, justify="right")
    table.add_column("window ends")
    for b in budgets:
        used = (b.spent_usd + b.reserved_usd) / b.limit_usd if b.limit_usd > 0 else Decimal(0)
        style = "red" if used >= 1 else "yellow" if used >= Decimal("0.8") else "green"
        table.add_row(
            b.scope,
            b.window,
            f"${b.spent_usd:f}",
            f"${b.reserved_usd:f}",
            f"${b.limit_usd:f}",
            Text(f"{used * 100:.1f}%", style=style),
            b.window_ends_at,
        )
    if not budgets:
        table.add_row(Text("no budget configured", style="dim"), "", "", "", "", "", "")
    return table


def render(snapshot: Snapshot) -> RenderableType:
    """One frame: the daemon, its models, its providers' breakers, its budgets."""
    status = snapshot.status
    return Group(_header(status), _models(status), _providers(status), _budgets(snapshot.budgets))


def unreachable(err: RatatoskrError) -> RenderableType:
    return Text(f"daemon unreachable: {err.message} (retrying)", style="bold red")


def watch(
    fetch: Callable[[], Snapshot],
    console: Console,
    interval_s: float,
    *,
    frames: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Redraw every ``interval_s`` until Ctrl-C (or ``frames`` frames); a daemon that goes away is
    shown as such and asked again, not a crash."""
    drawn = 0
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while frames is None or drawn < frames:
                try:
                    frame = render(fetch())
                except RatatoskrError as err:
                    frame = unreachable(err)
                live.update(frame, refresh=True)
                drawn += 1
                if frames is None or drawn < frames:
                    sleep(interval_s)
    except KeyboardInterrupt:
        pass
    return 0
