"""Circuit breakers per provider and model, and the stage that asks them before every upstream call.

A candidate that keeps failing costs every caller a timeout or an error before a fallback can
answer; an open breaker skips it without a call.  Closed → open when, over a sliding window of
``window_s``, at least ``min_calls`` calls were made and the share of transient failures reached
``failure_threshold``; open for ``cooldown_s``; then half-open: up to ``half_open_probes`` calls go
through at once, the first success closes it and a failure opens it again.  Only transient
failures count against an upstream: a 400 or 401 proves it is up (the caller or the key is wrong).

The stage sits just above dispatch, below retry, so every try counts as one call.  The in-process
ONNX pool has no breaker: it is not an upstream that can be down while this process is up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from ratatoskr_client.errors import RatatoskrError, Unavailable
from ratatoskr_client.types import ChatEvent
from ratatoskr_server.config import BreakerSettings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import Call, Candidate, Result
from ratatoskr_server.pipeline.chain import Next, NextStream, Stage
from ratatoskr_server.providers.errors import transient
from ratatoskr_server.providers.local import LocalProvider
from ratatoskr_server.state.breakers import BreakerStore, Circuit, Phase
from ratatoskr_server.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

_GAUGE = {Phase.CLOSED: 0, Phase.HALF_OPEN: 1, Phase.OPEN: 2}


class CircuitOpen(Unavailable):
    """The candidate's breaker is open: refused here, without a call (a fallback moves on, retry does not)."""


class Breakers:
    """The breaker logic over a ``BreakerStore``; ``clock`` is monotonic seconds (tests inject one)."""

    def __init__(
        self,
        settings: BreakerSettings,
        store: BreakerStore,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.metrics = metrics

    def skipped(self, key: str) -> bool:
        """Whether ``key`` would be refused now; takes no probe (a fallback asks before it tries)."""
        circuit = self.store.peek(key)
        if circuit is None or circuit.phase is Phase.CLOSED or not self.settings.enabled:
            return False
        if circuit.phase is Phase.OPEN:
            return self.clock() - circuit.opened_at < self.settings.cooldown_s
        return circuit.probing >= self.settings.half_open_probes

    def admit(self, key: str) -> bool:
        """Whether a call to ``key`` may go now; in half-open it takes one of the probes."""
        circuit = self.store.peek(key)
        if circuit is None or circuit.phase is Phase.CLOSED or not self.settings.enabled:
            return True
        if circuit.phase is Phase.OPEN:
            if self.clock() - circuit.opened_at < self.settings.cooldown_s:
                return False
            circuit.probing = 0
            self._enter(key, circuit, Phase.HALF_OPEN)
        if circuit.probing >= self.settings.half_open_probes:
            return False
        circuit.probing += 1
        return True

    def retry_after(self, key: str) -> float | None:
        """Seconds until an open ``key`` half-opens."""
        circuit = self.store.peek(key)
        if circuit is None or circuit.phase is not Phase.OPEN:
            return None
        return max(circuit.opened_at + self.settings.cooldown_s - self.clock(), 0.0)

    def record(self, key: str, failed: bool) -> None:
        """One finished call to ``key``: ``failed`` when it failed transiently."""
        circuit = self.store.circuit(key)
        now = self.clock()
        if circuit.phase is Phase.HALF_OPEN:
            circuit.probing = max(circuit.probing - 1, 0)
            if failed:
                self._open(key, circuit, now)
            else:
                self._close(key, circuit)
            return
        if circuit.phase is Phase.OPEN:
            return  # a call let through before it opened, ending late: the verdict is already in
        outcomes = circuit.outcomes
        outcomes.append((now, failed))
        circuit.failures += failed
        horizon = now - self.settings.window_s
        while outcomes[0][0] <= horizon:
            circuit.failures -= outcomes.popleft()[1]
        calls = len(outcomes)
        if failed and calls >= self.settings.min_calls and circuit.failures >= self.settings.failure_threshold * calls:
            self._open(key, circuit, now)

    def release(self, key: str) -> None:
        """A call that ended without a verdict (the caller went away): give its probe back."""
        circuit = self.store.peek(key)
        if circuit is not None and circuit.phase is Phase.HALF_OPEN:
            circuit.probing = max(circuit.probing - 1, 0)

    def phases(self) -> dict[str, Phase]:
        """Every known breaker's phase (an open one past its cooldown reads as half-open)."""
        now = self.clock()
        shown: dict[str, Phase] = {}
        for key, circuit in self.store.circuits().items():
            phase = circuit.phase
            if phase is Phase.OPEN and now - circuit.opened_at >= self.settings.cooldown_s:
                phase = Phase.HALF_OPEN
            shown[key] = phase
        return shown

    def _open(self, key: str, circuit: Circuit, now: float) -> None:
        circuit.opened_at = now
        circuit.outcomes.clear()
        circuit.failures = 0
        circuit.probing = 0
        self._enter(key, circuit, Phase.OPEN)
        if self.metrics is not None:
            self.metrics.breaker_opens.labels(target=self.metrics.model_label(key)).inc()
        log.warning("circuit breaker opened", extra={"target": key, "cooldown_s": self.settings.cooldown_s})

    def _close(self, key: str, circuit: Circuit) -> None:
        circuit.outcomes.clear()
        circuit.failures = 0
        self._enter(key, circuit, Phase.CLOSED)
        log.info("circuit breaker closed", extra={"target": key})

    def _enter(self, key: str, circuit: Circuit, phase: Phase) -> None:
        circuit.phase = phase
        self.store.entered(key, circuit)
        if self.metrics is not None:
            self.metrics.breaker_state.labels(target=self.metrics.model_label(key)).set(_GAUGE[phase])


def _target(call: Call) -> Candidate:
    if call.target is None:
        raise AssertionError("a call reached the breaker without a target: the plan stage is missing")
    return call.target


class BreakerStage(Stage):
    def __init__(self, breakers: Breakers) -> None:
        self.breakers = breakers

    def _admitted(self, target: Candidate) -> str:
        key = target.id
        if not self.breakers.admit(key):
            raise CircuitOpen(
                f"{key}: circuit breaker open after repeated failures; skipped without a call",
                retry_after_s=self.breakers.retry_after(key),
            )
        return key

    async def unary(self, call: Call, ctx: RequestContext, next: Next) -> Result:
        target = _target(call)
        if isinstance(target.provider, LocalProvider):
            return await next(call, ctx)
        key = self._admitted(target)
        try:
            result = await next(call, ctx)
        except RatatoskrError as err:
            self.breakers.record(key, transient(err))
            raise
        except BaseException:
            self.breakers.release(key)
            raise
        self.breakers.record(key, False)
        return result

    def stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        if isinstance(_target(call).provider, LocalProvider):
            return next(call, ctx)
        return self._watched(call, ctx, next)

    async def _watched(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        key = self._admitted(_target(call))
        events = next(call, ctx)
        try:
            async with aclosing(events):  # type: ignore[type-var]
                async for event in events:
                    yield event
        except RatatoskrError as err:
            self.breakers.record(key, transient(err))
            raise
        except BaseException:
            self.breakers.release(key)
            raise
        self.breakers.record(key, False)
