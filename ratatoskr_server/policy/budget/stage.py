"""The budget stage: a paid call reserves its worst-case cost before it is sent, and settles after.

Before dispatch the cost is bounded from the model's price, the prompt's real token count (the
prompt as the context stage left it, counted with the model's vocabulary where known) and the
answer's reserve (``max_tokens``, else the model's max output; see ``policy/reserve.py``).  That
amount is held atomically in every bucket the call touches (``state/``); a hold that would pass a
limit is refused with RESOURCE_EXHAUSTED naming spent, reserved, limit and the window's end (the
retry-after).  However the call ends the hold is settled to what was used: the reported usage on
success; nothing when the upstream refused before answering; the prompt and the output streamed so
far when a stream is cut or its consumer goes away; the whole hold when a unary call is cancelled
or times out (the upstream may have finished and billed; nobody can tell).  A ledger completes a
settle once called even when the request's task is cancelled, and a hold never settled (the
daemon died) lapses after ``budget.reservation_ttl_s``.

Models that cost nothing (on this host, a private network, or priced at zero) are never held or
refused; a paid model with no known price follows ``budget.unknown_price``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_CEILING, Decimal

from ratatoskr_client.errors import Cancelled, DeadlineExceeded, FailedPrecondition, RatatoskrError, ResourceExhausted
from ratatoskr_client.types import (
    ChatEvent,
    ChatResult,
    ContentDelta,
    GenerateResult,
    Message,
    ReasoningDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
    UsageEvent,
)
from ratatoskr_server.config import BudgetSettings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import Call, ChatInput, GenerateInput, Result
from ratatoskr_server.pipeline.chain import Next, NextStream, Stage
from ratatoskr_server.policy.budget.pricing import Price, find_price
from ratatoskr_server.policy.budget.scopes import Scopes
from ratatoskr_server.policy.budget.windows import utc_now
from ratatoskr_server.policy.reserve import output_reserve
from ratatoskr_server.policy.templates.render import PromptCounter, TemplateRenderer, estimate_tokens
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.registry import ModelRegistry
from ratatoskr_server.state.budget import BucketState, BudgetLedger, Refusal, Reservation
from ratatoskr_server.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
#: Errors after which the upstream may have answered (and billed) without the answer reaching us.
_UNKNOWN_OUTCOME = (DeadlineExceeded, Cancelled)
#: Distinct (model, target, tools) counters remembered; more are forgotten all at once.
_MAX_REMEMBERED = 1024
_SHOWN = Decimal("0.000001")


_SETTLE_FAILED = "budget settle failed; the reservation lapses after budget.reservation_ttl_s"


def _report_failed_settle(stored: asyncio.Future[None]) -> None:
    if not stored.cancelled() and (err := stored.exception()) is not None:
        log.error(_SETTLE_FAILED, exc_info=err)


def usd(amount: Decimal) -> str:
    """Money as a person reads it: dollars to the micro-dollar, rounded up, no exponent."""
    shown = amount.quantize(_SHOWN, rounding=ROUND_CEILING).normalize()
    return f"${shown:f}"


def _duration(seconds: float) -> str:
    minutes = max(int(seconds) // 60, 0)
    return f"{minutes // 60}h{minutes % 60:02d}m"


@dataclass(slots=True)
class Hold:
    """One call's reservation and what is needed to price what it really used."""

    reservation: Reservation
    price: Price
    prompt_tokens: int
    counter: PromptCounter
    #: Output seen so far on a stream (text, reasoning, tool calls), for when no usage is reported.
    output: list[str] = field(default_factory=list)
    usage: Usage | None = None

    def reported(self, usage: Usage) -> Decimal | None:
        if not usage.prompt_tokens and not usage.completion_tokens:
            return None
        return self.price.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)


class BudgetStage(Stage):
    def __init__(
        self,
        settings: BudgetSettings,
        default_reserve: int,
        registry: ModelRegistry,
        renderer: TemplateRenderer,
        ledger: BudgetLedger,
        metrics: Metrics | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.settings = settings
        self.default_reserve = default_reserve
        self.registry = registry
        self.renderer = renderer
        self.ledger = ledger
        self.metrics = metrics
        self.clock = clock
        self.scopes = Scopes(settings)
        self._warn_at = Decimal(str(settings.warn_at))
        self._counters: dict[tuple[str, str, bool], PromptCounter] = {}

    # -- before ------------------------------------------------------------------------------------
    async def _counter(self, call: Call, names: Sequence[str], with_tools: bool) -> PromptCounter:
        assert call.target is not None
        key = (call.model, call.target.id, with_tools)
        counter = self._counters.get(key)
        if counter is None:
            if len(self._counters) >= _MAX_REMEMBERED:
                self._counters.clear()
            counter = self._counters[key] = await self.renderer.counter(names, with_tools=with_tools)
        return counter

    async def _prompt_tokens(self, call: Call, counter: PromptCounter) -> int:
        payload = call.payload
        if isinstance(payload, GenerateInput):
            if counter.tokenizer is None:
                return estimate_tokens(payload.prompt)
            tokenizer = counter.tokenizer
            encoded = await asyncio.to_thread(tokenizer.encode, payload.prompt, add_special_tokens=False)
            return len(encoded.ids)
        assert isinstance(payload, ChatInput)
        tools = call.options.tools if call.options else []
        messages: Sequence[Message] = payload.messages
        if counter.exact:  # renders and tokenizes: off the event loop
            return await asyncio.to_thread(counter.count, messages, tools)
        return counter.count(messages, tools)

    def _refused(self, refusal: Refusal, now: datetime) -> ResourceExhausted:
        state = refusal.state
        bucket = state.bucket
        seconds = max((bucket.ends_at - now).total_seconds(), 0.0)
        if self.metrics is not None:
            self.metrics.budget_refusals.labels(scope=bucket.scope).inc()
        return ResourceExhausted(
            f"budget {bucket.scope} ({bucket.window}, {self.settings.timezone}) has no room for this call: "
            f"spent {usd(state.spent)}, reserved {usd(state.reserved)}, limit {usd(bucket.limit)}, "
            f"this call needs up to {usd(refusal.amount)}; the window ends at {bucket.ends_at.isoformat()} "
            f"(in {_duration(seconds)})",
            retry_after_s=seconds,
        )

    def _warn(self, levels: Sequence[BucketState], ctx: RequestContext) -> None:
        warnings = []
        for level in levels:
            used = level.spent + level.reserved
            limit = level.bucket.limit
            if self.metrics is not None:
                remaining = self.metrics.child(self.metrics.budget_remaining, level.bucket.scope, level.bucket.window)
                remaining.set(float(max(limit - used, Decimal(0))))
            share = used / limit if limit else Decimal(1)
            if share >= self._warn_at:
                warnings.append(
                    f"{level.bucket.scope} {level.bucket.window}: {usd(used)} of {usd(limit)} spent or reserved "
                    f"({share * 100:.0f}%)"
                )
                if self.metrics is not None:
                    self.metrics.budget_warnings.labels(scope=level.bucket.scope).inc()
        if warnings:
            warning = "; ".join(warnings)
            log.warning("budget warning", extra={"request_id": ctx.request_id, "budget_warning": warning})
            ctx.note_budget_warning(warning)

    async def admit(self, call: Call, ctx: RequestContext) -> Hold | None:
        """The call's hold, or None when no budget concerns it; raises when it may not go."""
        target = call.target
        if target is None or call.task not in (Capability.CHAT, Capability.GENERATE):
            return None
        if target.provider.local:
            return None  # on this host or a private network: nothing to pay
        now = self.clock()
        names = (call.model, target.id, target.model)
        buckets = self.scopes.for_call(names[:2], ctx.budget_scope or ctx.caller, now)
        cap = self.settings.max_request_usd
        if not buckets and cap is None:
            return None
        price = find_price(names, target.provider.name, target.model, self.settings.prices, self.registry)
        if price is None:
            if self.settings.unknown_price == "allow":
                return None
            raise FailedPrecondition(
                f"no price is known for '{target.id}' and a budget applies to it; declare one in the "
                f'configuration: [budget.prices."{target.id}"] input_per_million = "0.15", '
                f'output_per_million = "0.60" (USD per million tokens), or set budget.unknown_price = "allow"'
            )
        if price.free:
            return None
        tools = call.options.tools if call.options else []
        counter = await self._counter(call, names, bool(tools))
        prompt = await self._prompt_tokens(call, counter)
        record = self.registry.lookup(target.provider.name, target.model)
        asked = call.options.max_tokens if call.options else None
        output = output_reserve(asked, record.max_output_tokens if record else 0, self.default_reserve)
        amount = price.cost(prompt, output)
        if cap is not None and amount > cap:
            raise ResourceExhausted(
                f"this call may cost up to {usd(amount)} ({prompt} prompt tokens, up to {output} answer tokens at "
                f"'{target.id}' prices), more than budget.max_request_usd = {usd(cap)}; lower max_tokens or "
                "shorten the prompt"
            )
        if not buckets:
            return None
        stamp = now.timestamp()
        held = await self.ledger.reserve(buckets, amount, now=stamp, expires_at=stamp + self.settings.reservation_ttl_s)
        if isinstance(held, Refusal):
            raise self._refused(held, now)
        self._warn(held.levels, ctx)
        return Hold(held, price, prompt, counter)

    # -- after -------------------------------------------------------------------------------------
    async def _output_tokens(self, hold: Hold, texts: Sequence[str]) -> int:
        text = "".join(texts)
        if not text:
            return 0
        tokenizer = hold.counter.tokenizer
        if tokenizer is None:
            return estimate_tokens(text)
        encoded = await asyncio.to_thread(tokenizer.encode, text, add_special_tokens=False)
        return len(encoded.ids)

    async def _used(self, hold: Hold, texts: Sequence[str]) -> Decimal:
        """The prompt and ``texts`` as output, priced: what a call without reported usage used."""
        return hold.price.cost(hold.prompt_tokens, await self._output_tokens(hold, texts))

    def settle(self, hold: Hold, actual: Decimal, ctx: RequestContext) -> None:
        """Charge what the call used, off the answer's path.

        The ledger takes the settle now, in order with every later call on it (a report right after
        the answer sees it), and stores it on its own, however this request ends; the answer does
        not wait for the commit (on the SQLite ledger a thread hop and a commit, about a quarter of a
        millisecond per call). Until it is stored the reservation still covers the call, so another
        call can only see less room, never more."""
        ctx.answered.budget_reserved_usd = float(hold.reservation.amount)
        ctx.answered.budget_settled_usd = float(actual)  # the cost meter (meter.py) counts it
        try:
            stored = self.ledger.settle(hold.reservation, actual)
        except Exception:
            log.exception(_SETTLE_FAILED)
            return
        stored.add_done_callback(_report_failed_settle)

    async def unary(self, call: Call, ctx: RequestContext, next: Next) -> Result:
        hold = await self.admit(call, ctx)
        if hold is None:
            return await next(call, ctx)
        actual = hold.reservation.amount  # cancelled or timed out: the upstream may have billed it all
        try:
            result = await next(call, ctx)
            if isinstance(result, ChatResult):
                text = [result.message.content, result.reasoning, *(c.arguments for c in result.message.tool_calls)]
            elif isinstance(result, GenerateResult):
                text = [result.text]
            else:
                text = []
            actual = hold.reported(result.usage) or await self._used(hold, text)
            return result
        except RatatoskrError as err:
            if not isinstance(err, _UNKNOWN_OUTCOME):
                actual = Decimal(0)  # refused upstream: nothing was generated
            raise
        finally:
            self.settle(hold, actual, ctx)

    async def stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        hold = await self.admit(call, ctx)
        events = next(call, ctx)
        if hold is None:
            async with aclosing(events):  # type: ignore[type-var]
                async for event in events:
                    yield event
            return
        refused = False
        try:
            async with aclosing(events):  # type: ignore[type-var]
                async for event in events:
                    if isinstance(event, ContentDelta | ReasoningDelta):
                        hold.output.append(event.text)
                    elif isinstance(event, ToolCallDelta):
                        hold.output.append(event.arguments)
                    elif isinstance(event, ToolCallStart):
                        hold.output.append(event.name)
                    elif isinstance(event, UsageEvent):
                        hold.usage = event.usage
                    yield event
        except RatatoskrError as err:
            # Refused before anything came: nothing was generated.  Anything else used what it streamed.
            refused = not hold.output and hold.usage is None and not isinstance(err, _UNKNOWN_OUTCOME)
            raise
        finally:
            reported = hold.reported(hold.usage) if hold.usage is not None else None
            if refused:
                actual = Decimal(0)
            elif reported is not None:
                actual = reported
            else:
                actual = await self._used(hold, hold.output)
            self.settle(hold, actual, ctx)
