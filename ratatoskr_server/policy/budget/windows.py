"""Budget windows: the calendar day and month in the configured zone, with real calendar arithmetic.

A day is from local midnight to the next local midnight, so it is 23 or 25 hours long when the
clocks change; a month ends at midnight of the first of the next month.  Windows are named by their
local date (``day:2026-12-02``, ``month:2026-12``), so spending rows of a past window are simply
never read again, and a restart finds today's row where it left it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class Window:
    name: str
    ends_at: datetime


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    # Where midnight does not exist (a DST jump at 00:00) this is the instant the day begins anyway.
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def day_window(now: datetime, zone: ZoneInfo) -> Window:
    today = now.astimezone(zone).date()
    return Window(f"day:{today.isoformat()}", _midnight(today + timedelta(days=1), zone))


def month_window(now: datetime, zone: ZoneInfo) -> Window:
    today = now.astimezone(zone).date()
    first_next = date(today.year + 1, 1, 1) if today.month == 12 else date(today.year, today.month + 1, 1)
    return Window(f"month:{today.year:04d}-{today.month:02d}", _midnight(first_next, zone))


class Windows:
    """The current day and month windows of one zone, each worked out once while it lasts.

    A call asks for its windows on every paid request; the calendar arithmetic (a zone conversion
    and two date computations per window) is redone only when ``now`` leaves the kept window, in
    either direction (a test's clock may go back).
    """

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self._day: tuple[datetime, Window] | None = None
        self._month: tuple[datetime, Window] | None = None

    def day(self, now: datetime) -> Window:
        kept = self._day
        if kept is None or not kept[0] <= now < kept[1].ends_at:
            window = day_window(now, self.zone)
            kept = self._day = (_midnight(now.astimezone(self.zone).date(), self.zone), window)
        return kept[1]

    def month(self, now: datetime) -> Window:
        kept = self._month
        if kept is None or not kept[0] <= now < kept[1].ends_at:
            window = month_window(now, self.zone)
            kept = self._month = (_midnight(now.astimezone(self.zone).date().replace(day=1), self.zone), window)
        return kept[1]


def utc_now() -> datetime:
    return datetime.now(UTC)
