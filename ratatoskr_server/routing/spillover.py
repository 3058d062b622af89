"""Spillover: a local-first route sends calls to its next candidates while the local queue is long.

A local model answers cheaply and privately until its queue grows; then every new call waits
behind the backlog while a remote API could answer at once.  For a route whose first candidate is
local (the in-process ONNX pool, or a provider marked ``local``, such as llama.cpp or Ollama), the
queue depth is read before the call: requests waiting in that model's batcher, or calls in flight
on the local server (its bulkhead's count).  At ``spill_at`` the call goes to the route's other
candidates first, the local one kept last (while its queue is under ``reject_at``, so nothing
accepted is lost when the others fail).  A candidate counts as a spill target only if its breaker
would let a call through and its bulkhead has room.  When none does (the privacy tier removed
them, their breakers are open, their bulkheads are full) and the queue has reached ``reject_at``,
the call is refused with RESOURCE_EXHAUSTED and a retry-after instead of joining the queue.

The stage sits after privacy, so a Sovereign request's candidates are already only those its tier
allows: it can never spill to a public API, however long the local queue.  It sits before the
fallback stage, which walks the order decided here.  Routes only: a call naming a local model
directly asked for that model and queues for it (its batcher's ``max_queue`` bounds that).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

from ratatoskr_client.errors import ResourceExhausted
from ratatoskr_client.types import ChatEvent
from ratatoskr_server.config import RouteSettings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.local.pool import LocalModelPool
from ratatoskr_server.pipeline.call import Call, Candidate, Result
from ratatoskr_server.pipeline.chain import Next, NextStream, Stage
from ratatoskr_server.providers.local import LocalProvider
from ratatoskr_server.routing.breaker import Breakers
from ratatoskr_server.routing.bulkhead import Bulkheads
from ratatoskr_server.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

#: What a refused caller is told to wait: a queue of reject_at drains within moments on a live model.
REJECT_RETRY_AFTER_S = 1.0


class QueueDepth:
    """How many requests wait for a local candidate now, read from the real queues."""

    def __init__(self, pool: LocalModelPool, bulkheads: Bulkheads) -> None:
        self.pool = pool
        self.bulkheads = bulkheads

    def __call__(self, candidate: Candidate) -> int:
        if isinstance(candidate.provider, LocalProvider):
            return self.pool.queue_depth(candidate.model)
        return self.bulkheads.of(candidate).in_flight


class SpilloverStage(Stage):
    def __init__(
        self,
        routes: Mapping[str, RouteSettings],
        depth: QueueDepth,
        breakers: Breakers | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.routes = routes
        self.depth = depth
        self.breakers = breakers
        self.metrics = metrics

    def _takes(self, candidate: Candidate) -> bool:
        """Whether ``candidate`` may take a spilled call now: its breaker lets it through, its bulkhead has room."""
        if self.breakers is not None and self.breakers.skipped(candidate.id):
            return False
        return not self.depth.bulkheads.of(candidate).full

    def decided(self, call: Call, ctx: RequestContext) -> Call:
        """The call with its candidates in the order the local queue allows (unchanged when it is short)."""
        route = self.routes.get(call.model)
        if route is None or not call.candidates:
            return call
        first = call.candidates[0]
        if not first.provider.local:
            return call
        depth = self.depth(first)
        if depth < route.spill_at:
            return call
        others = [c for c in call.candidates[1:] if self._takes(c)]
        if not others:
            if depth >= route.reject_at:
                raise ResourceExhausted(
                    f"route '{call.model}': {first.id} has {depth} requests queued, the route's limit "
                    f"(routes.{call.model}.reject_at = {route.reject_at}), and no other candidate the request's "
                    "privacy tier allows can take it now; retry shortly",
                    retry_after_s=REJECT_RETRY_AFTER_S,
                )
            return call  # nowhere else to go: it queues
        ctx.note_spilled(first.id)
        if self.metrics is not None:
            self.metrics.spills.labels(provider=first.provider.name).inc()
        log.debug("spilling", extra={"request_id": ctx.request_id, "candidate": first.id, "depth": depth})
        order = (*others, first) if depth < route.reject_at else tuple(others)
        return call.but(candidates=order, target=order[0])

    async def unary(self, call: Call, ctx: RequestContext, next: Next) -> Result:
        return await next(self.decided(call, ctx), ctx)

    def stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        return next(self.decided(call, ctx), ctx)  # the chain calls this at the stream's first read
