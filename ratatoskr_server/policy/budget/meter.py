"""The cost meter: ``ratatoskr_cost_usd`` for every priced remote call, budget or not.

Budgets exist only where configured, but "what did we spend, on which provider and model?" is a
question every deployment asks.  The meter sits just outside the budget stage, so it sees each
attempt (fallback and retries run around it) and reads what that attempt cost:

- what a budget charged it, when one held it (the budget settles failures and cut streams too, so
  that amount is the truth, estimates included);
- else, for an answer, the tokens the provider reported at the model's price (declared in
  ``[budget.prices]`` or the registry's), the same price the budget would use; cached prompt
  tokens are not told apart here, so a model with a cheaper cached-input price is counted at its
  full input price unless a budget held the call.

A call to a local or zero-priced model, a failure no budget charged, and a model with no known
price count nothing.  Only the metric is written: nothing here can refuse or delay a call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing

from ratatoskr_client.types import ChatEvent
from ratatoskr_server.config import PriceSettings
from ratatoskr_server.context import Answered, RequestContext
from ratatoskr_server.pipeline.call import Call, Result
from ratatoskr_server.pipeline.chain import Next, NextStream, Stage
from ratatoskr_server.policy.budget.pricing import find_price
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.registry import ModelRegistry
from ratatoskr_server.telemetry.metrics import Metrics

_PRICED = (Capability.CHAT, Capability.GENERATE)


class CostMeterStage(Stage):
    def __init__(self, prices: Mapping[str, PriceSettings], registry: ModelRegistry, metrics: Metrics) -> None:
        self.prices = prices
        self.registry = registry
        self.metrics = metrics

    def _paid(self, call: Call) -> bool:
        target = call.target
        return target is not None and not target.provider.local and call.task in _PRICED

    async def unary(self, call: Call, ctx: RequestContext, next: Next) -> Result:
        if not self._paid(call):
            return await next(call, ctx)
        ctx.answered.budget_settled_usd = None  # this attempt's charge only, not an earlier one's
        answered = False
        try:
            result = await next(call, ctx)
            answered = True
            return result
        finally:
            self._count(call, ctx.answered, answered)

    def stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        if not self._paid(call):
            return next(call, ctx)  # no layer per event for what costs nothing
        return self._metered(call, ctx, next)

    async def _metered(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        ctx.answered.budget_settled_usd = None
        answered = False
        try:
            async with aclosing(next(call, ctx)) as events:  # type: ignore[type-var]
                async for event in events:
                    yield event
            answered = True
        finally:
            self._count(call, ctx.answered, answered)

    def _count(self, call: Call, record: Answered, answered: bool) -> None:
        target = call.target
        assert target is not None  # _paid checked it
        if record.budget_settled_usd is not None:
            amount = record.budget_settled_usd
        elif answered and (record.input_tokens or record.output_tokens):
            names = (call.model, target.id, target.model)
            price = find_price(names, target.provider.name, target.model, self.prices, self.registry)
            if price is None or price.free:
                return
            amount = float(price.cost(record.input_tokens, record.output_tokens))
        else:
            return
        if amount > 0:
            model = self.metrics.model_label(target.id)
            self.metrics.child(self.metrics.cost, target.provider.name, model).inc(amount)
