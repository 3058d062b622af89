"""Fallback: a route's next candidate when one cannot answer.

The stage sits right after plan and privacy, so it walks only the candidates the request's tier
allows, and every stage below it (params, context fit, budget, template, retry, breaker) runs
again for each candidate: the budget reserves for the model that is actually called, the context
fit measures against that model's window.

It moves on when a candidate failed transiently (after its retries), does not have the model
(NotFound), found the input too long (OutOfRange: the context stage below refuses the next
candidates whose window is as small, so the walk reaches a larger one), or the budget cannot cover
it (ResourceExhausted from the budget stage).  Candidates whose circuit breaker is open are skipped
without a call.  Any other failure is the caller's to see: a bad request fails everywhere alike.
Nothing is tried once the deadline has passed; the last failure is the answer.  A stream that
breaks after its first content resumes on the next candidate when ``failover`` (``routing.failover``)
may resume it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

from ratatoskr_client.errors import NotFound, OutOfRange, RatatoskrError
from ratatoskr_client.types import ChatEvent
from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import Call, Candidate, Result
from ratatoskr_server.pipeline.chain import Next, NextStream, Stage
from ratatoskr_server.providers.errors import transient
from ratatoskr_server.routing.breaker import Breakers, CircuitOpen
from ratatoskr_server.routing.commit import opening
from ratatoskr_server.routing.failover import StreamFailover
from ratatoskr_server.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


def falls_back(err: RatatoskrError) -> bool:
    """Whether another candidate may succeed where this one failed with ``err``."""
    return transient(err) or isinstance(err, NotFound | OutOfRange)


class FallbackStage(Stage):
    def __init__(
        self,
        breakers: Breakers | None = None,
        metrics: Metrics | None = None,
        failover: StreamFailover | None = None,
    ) -> None:
        self.breakers = breakers
        self.metrics = metrics
        self.failover = failover

    def _usable(self, call: Call) -> list[Candidate]:
        """The candidates to try, in order: those whose breaker is open are left out, unless all are
        (then the first goes, for the breaker stage to refuse with its reason and retry-after)."""
        breakers = self.breakers
        if breakers is None:
            return list(call.candidates)
        usable = [c for c in call.candidates if not breakers.skipped(c.id)]
        return usable or list(call.candidates[:1])

    def _moved_on(self, candidate: Candidate, err: RatatoskrError, ctx: RequestContext) -> None:
        ctx.note_failover(candidate.id)
        if self.metrics is not None:
            self.metrics.fallbacks.labels(provider=candidate.provider.name).inc()
        if not isinstance(err, CircuitOpen):
            log.info(
                "falling back to the next candidate",
                extra={"request_id": ctx.request_id, "candidate": candidate.id, "error": str(err)},
            )

    async def unary(self, call: Call, ctx: RequestContext, next: Next) -> Result:
        if len(call.candidates) <= 1:
            return await next(call, ctx)  # one candidate: nothing to walk (its breaker is below)
        candidates = self._usable(call)
        for candidate in candidates[:-1]:
            try:
                return await next(call.but(target=candidate), ctx)
            except RatatoskrError as err:
                if not falls_back(err) or ctx.remaining() == 0:
                    raise
                self._moved_on(candidate, err, ctx)
        return await next(call.but(target=candidates[-1]), ctx)

    def stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        if len(call.candidates) <= 1:
            return next(call, ctx)
        failover = self.failover
        if failover is not None and failover.applies(call):
            return failover.walk(call, ctx, next, self._usable(call), self._moved_on, falls_back)
        return self._walk(call, ctx, next)

    async def _walk(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        candidates = self._usable(call)
        for i, candidate in enumerate(candidates):
            events = next(call.but(target=candidate), ctx)
            async with aclosing(events):  # type: ignore[type-var]
                try:
                    held = await opening(events)
                except RatatoskrError as err:
                    if i == len(candidates) - 1 or not falls_back(err) or ctx.remaining() == 0:
                        raise
                    self._moved_on(candidate, err, ctx)
                    continue
                for event in held:
                    yield event
                async for event in events:
                    yield event
                return
