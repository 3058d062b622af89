"""Per-caller request and token rates over a sliding minute.

``RateCounter`` is the protocol the front uses; ``MemoryRates`` keeps the windows in this process.
It is exact under concurrency because ``admit`` checks and records without awaiting in between:
on one event loop no other call can slip in between the check and the count.  A Redis
implementation (several replicas sharing one limit) would do the same in one Lua script.

Tokens are known only once a call has finished, so ``tpm`` admits a call while the tokens used in
the last minute are under the limit, and the call's tokens are added afterwards (``record_tokens``);
one call may take the window past the limit, and the next ones then wait until it slides back under.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class Limited:
    """A refused call: which limit ("rpm", "tpm") and how long until the window lets one through."""

    limit: str
    retry_after_s: float


class RateCounter(Protocol):
    async def admit(self, key: str, *, rpm: int | None, tpm: int | None) -> Limited | None:
        """Count one call for ``key`` unless it is over a limit; None means admitted (and counted)."""

    async def record_tokens(self, key: str, tokens: int) -> None:
        """Add a finished call's tokens to ``key``'s window."""


@dataclass(slots=True)
class _Window:
    calls: deque[float] = field(default_factory=deque)
    #: (when, tokens) of finished calls, and their running sum.
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0


class MemoryRates:
    def __init__(self, clock: Callable[[], float] = time.monotonic, window_s: float = WINDOW_S) -> None:
        self.clock = clock
        self.window_s = window_s
        self._windows: dict[str, _Window] = {}

    def _window(self, key: str, now: float) -> _Window:
        window = self._windows.setdefault(key, _Window())
        horizon = now - self.window_s
        while window.calls and window.calls[0] <= horizon:
            window.calls.popleft()
        while window.tokens and window.tokens[0][0] <= horizon:
            window.token_sum -= window.tokens.popleft()[1]
        return window

    async def admit(self, key: str, *, rpm: int | None, tpm: int | None) -> Limited | None:
        now = self.clock()
        window = self._window(key, now)
        if rpm is not None and len(window.calls) >= rpm:
            # The oldest of the last ``rpm`` calls must leave the window first.
            return Limited("rpm", window.calls[-rpm] + self.window_s - now)
        if tpm is not None and window.token_sum >= tpm:
            return Limited("tpm", self._tokens_free_at(window, tpm) - now)
        window.calls.append(now)
        return None

    def _tokens_free_at(self, window: _Window, tpm: int) -> float:
        """When enough of the oldest token entries have left for the sum to be under ``tpm``."""
        remaining = window.token_sum
        for when, tokens in window.tokens:
            remaining -= tokens
            if remaining < tpm:
                return when + self.window_s
        return self.clock() + self.window_s  # unreachable: an empty window sums to 0

    async def record_tokens(self, key: str, tokens: int) -> None:
        if tokens <= 0:
            return
        now = self.clock()
        window = self._window(key, now)
        window.tokens.append((now, tokens))
        window.token_sum += tokens
