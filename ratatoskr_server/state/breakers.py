"""Circuit breaker state per key (``provider/model``): the outcomes of recent calls and the phase.

``BreakerStore`` is what the breaker logic (``routing/breaker.py``) reads and changes;
``MemoryBreakers`` keeps the circuits in this process.  Every operation is synchronous and never
awaits, so on one event loop a check and its update cannot interleave with another call's.  A
shared implementation (``state/redis_sync.py``) keeps deciding from memory and shares the phase
changes it is told of (``entered``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Phase(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class Circuit:
    """One key's breaker: the outcomes in the window, and when it opened."""

    phase: Phase = Phase.CLOSED
    #: (monotonic time, failed) of the calls in the sliding window, oldest first.
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    failures: int = 0
    opened_at: float = 0.0
    #: Probes let through since the breaker half-opened and not yet finished.
    probing: int = 0


class BreakerStore(Protocol):
    def circuit(self, key: str) -> Circuit:
        """``key``'s circuit, made closed and empty on first use."""

    def peek(self, key: str) -> Circuit | None:
        """``key``'s circuit if it has one (reading makes none)."""

    def circuits(self) -> Mapping[str, Circuit]:
        """Every circuit, for status and metrics."""

    def entered(self, key: str, circuit: Circuit) -> None:
        """``key``'s circuit has just changed phase (a shared store tells the other replicas)."""


class MemoryBreakers:
    def __init__(self) -> None:
        self._circuits: dict[str, Circuit] = {}

    def circuit(self, key: str) -> Circuit:
        found = self._circuits.get(key)
        if found is None:
            found = self._circuits[key] = Circuit()
        return found

    def peek(self, key: str) -> Circuit | None:
        return self._circuits.get(key)

    def circuits(self) -> Mapping[str, Circuit]:
        return self._circuits

    def entered(self, key: str, circuit: Circuit) -> None:
        return None
