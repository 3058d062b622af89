"""Bulkheads: a concurrency limit of its own for the local pool and for each provider.

``server.max_in_flight`` is the front door every call shares.  Alone it lets one failure mode take
all of it: 256 streams hung on one upstream left no slot for a local Embed that would have taken a
millisecond.  A bulkhead per place a call can go (``local.max_in_flight``,
``providers.NAME.max_in_flight``) caps what one of them may hold, so the rest of the front door
stays free for the others.  A full bulkhead refuses at once with RESOURCE_EXHAUSTED naming itself
(a route moves on to its next candidate: the refusal is transient); waiting for a slot would only
move the pile-up here.

The counts live in the gateway and survive reloads (a reload builds new providers, not new calls);
the in-flight count of a provider is also the queue depth spillover reads for a local server.

The stage sits above retry: one slot covers a call's tries, and the breaker never counts a refusal
that says nothing about the upstream's health.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from ratatoskr_client.errors import ResourceExhausted
from ratatoskr_client.types import ChatEvent
from ratatoskr_server.config import Settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import Call, Candidate, Result
from ratatoskr_server.pipeline.chain import Next, NextStream, Stage
from ratatoskr_server.providers.local import LocalProvider
from ratatoskr_server.telemetry.metrics import Metrics

#: The local pool's bulkhead, by the name status and messages use.
LOCAL = "local"


class BulkheadFull(ResourceExhausted):
    """A bulkhead is at its limit: refused here, without a call."""


@dataclass(eq=False, slots=True)
class Bulkhead:
    #: "local" or "providers.NAME": the table its limit is set in.
    name: str
    #: 0: no limit of its own (the front door still holds).
    limit: int
    in_flight: int = 0

    @property
    def full(self) -> bool:
        return 0 < self.limit <= self.in_flight

    def enter(self) -> None:
        if self.full:
            raise BulkheadFull(
                f"{self.name} is at its limit of {self.limit} calls in flight ({self.name}.max_in_flight); "
                "retry shortly or use another route",
                retry_after_s=1.0,
            )
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1


class Bulkheads:
    """The bulkheads by name; ``configure`` takes new limits and keeps the counts of calls under way."""

    def __init__(self, settings: Settings) -> None:
        self.local = Bulkhead(LOCAL, settings.local.max_in_flight)
        self._providers: dict[str, Bulkhead] = {}
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        self.local.limit = settings.local.max_in_flight
        for name, entry in settings.providers.items():
            head = self._providers.get(name)
            if head is None:
                self._providers[name] = Bulkhead(f"providers.{name}", entry.max_in_flight)
            else:
                head.limit = entry.max_in_flight

    def of(self, target: Candidate) -> Bulkhead:
        provider = target.provider
        if isinstance(provider, LocalProvider):
            return self.local
        head = self._providers.get(provider.name)
        if head is None:  # a provider the settings did not name (tests build some): unlimited, counted
            head = self._providers[provider.name] = Bulkhead(f"providers.{provider.name}", 0)
        return head

    def occupancy(self) -> dict[str, tuple[int, int]]:
        """(in flight, limit) by bulkhead name, for status."""
        heads = [self.local, *self._providers.values()]
        return {h.name: (h.in_flight, h.limit) for h in heads}


def _target(call: Call) -> Candidate:
    if call.target is None:
        raise AssertionError("a call reached the bulkhead without a target: the plan stage is missing")
    return call.target


class BulkheadStage(Stage):
    def __init__(self, bulkheads: Bulkheads, metrics: Metrics | None = None) -> None:
        self.bulkheads = bulkheads
        self.metrics = metrics

    def _entered(self, call: Call) -> Bulkhead:
        head = self.bulkheads.of(_target(call))
        if head.full and self.metrics is not None:
            self.metrics.bulkhead_refusals.labels(bulkhead=head.name).inc()
        head.enter()
        return head

    async def unary(self, call: Call, ctx: RequestContext, next: Next) -> Result:
        head = self._entered(call)
        try:
            return await next(call, ctx)
        finally:
            head.leave()

    def stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        return self._held(call, ctx, next)

    async def _held(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        # Entered at the first read (an unstarted generator's finally never runs): the fallback's
        # first read is where a refusal sends it on, before anything reached the caller.
        head = self._entered(call)
        try:
            events = next(call, ctx)
            async with aclosing(events):  # type: ignore[type-var]
                async for event in events:
                    yield event
        finally:
            head.leave()
