"""The plan stage: the router's candidates for the call's model, and the first as its target.

A fallback or failover stage placed after it will walk the candidates; until one exists the first
candidate is the one attempt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ratatoskr_client.types import ChatEvent
from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import Call, Result
from ratatoskr_server.pipeline.chain import Next, NextStream, Stage
from ratatoskr_server.routing.router import Router


class PlanStage(Stage):
    def __init__(self, router: Router) -> None:
        self.router = router

    def planned(self, call: Call) -> Call:
        candidates = self.router.plan(call.model, call.task)
        return call.but(candidates=candidates, target=candidates[0])

    async def unary(self, call: Call, ctx: RequestContext, next: Next) -> Result:
        return await next(self.planned(call), ctx)

    def stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        return next(self.planned(call), ctx)
