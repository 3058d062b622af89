"""The cache stage: answer what an identical request already got, compute only what it did not.

It sits after the stages that make the request final (presets, plan, privacy, parameters, context
fit), so the key is of what would really be sent to the resolved target, and before the budget
stage, so a hit reserves and spends nothing (and the template stage, whose rendering is a pure
function of what is keyed).  Embeddings and NLI are cached per input and per pair: a batch with some
known texts sends only the others on.  Classify is cached per request.  Chat and generate only when
asked (``x-ratatoskr-cache: on`` or ``cache.chat``) and deterministic (temperature 0 and a seed).

Never kept: errors (nothing is stored unless an answer arrives), truncated inputs and answers
(finish_reason "length", a conversation the context stage cut), and answers from another provider
than the planned target (a failover).  A hit's usage is zero (nothing was computed or billed; tokens
per minute are not charged) and its timing is the time the lookup took.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from ratatoskr_client.types import (
    ChatEvent,
    ChatResult,
    ClassifyResult,
    Done,
    EmbedResult,
    GenerateResult,
    NliResult,
    Timing,
    Usage,
    UsageEvent,
)
from ratatoskr_server.config import CacheSettings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import (
    Call,
    Candidate,
    ChatInput,
    ClassifyInput,
    EmbedInput,
    GenerateInput,
    NliInput,
    Result,
    expect,
)
from ratatoskr_server.pipeline.chain import Next, NextStream, Stage
from ratatoskr_server.policy.cache import codec
from ratatoskr_server.policy.cache.key import base_key, item_key, whole_item
from ratatoskr_server.state.cache import ResponseCache
from ratatoskr_server.telemetry.metrics import Metrics

#: What identifies the revision of a target's model ("" when nothing finer than its name is known).
Revision = Callable[[Candidate], str]


class CacheStage(Stage):
    def __init__(self, settings: CacheSettings, store: ResponseCache, metrics: Metrics, revision: Revision) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.revision = revision

    # -- which calls --------------------------------------------------------------------------------
    def _deterministic(self, call: Call, ctx: RequestContext) -> bool:
        """Chat and generate: asked for, temperature explicitly 0 and a seed (after the parameter stage,
        so a seed the model cannot take and was dropped makes the call uncacheable)."""
        asked = ctx.cache if ctx.cache is not None else self.settings.chat
        options = call.options
        return asked and options is not None and options.temperature == 0 and options.seed is not None

    def _base(self, call: Call, ctx: RequestContext, *, stream: bool = False) -> bytes:
        assert call.target is not None
        return base_key(
            call, ctx, self.revision(call.target), shared=self.settings.share_between_callers, stream=stream
        )

    def _count(self, call: Call, hits: int, misses: int) -> None:
        task = call.task.value
        if hits:
            self.metrics.cache_hits.labels(task=task).inc(hits)
        if misses:
            self.metrics.cache_misses.labels(task=task).inc(misses)

    async def unary(self, call: Call, ctx: RequestContext, next: Next) -> Result:
        payload = call.payload
        if ctx.cache is False:
            return await next(call, ctx)
        if isinstance(payload, EmbedInput):
            return await self._embed(call, payload, ctx, next)
        if isinstance(payload, NliInput):
            return await self._nli(call, payload, ctx, next)
        if isinstance(payload, ClassifyInput) or self._deterministic(call, ctx):
            assert isinstance(payload, ClassifyInput | ChatInput | GenerateInput)
            return await self._whole(call, payload, ctx, next)
        return await next(call, ctx)

    # -- per item ------------------------------------------------------------------------------------
    async def _lookup(
        self, call: Call, ctx: RequestContext, items: Sequence[Any], read: Callable[[bytes], Any]
    ) -> tuple[list[Any], dict[str, list[int]]]:
        """Each item's decoded entry (None on a miss) and the misses: key -> the indices holding it
        (an item given twice in one batch is computed once)."""
        base = self._base(call, ctx)
        keys = [item_key(base, item) for item in items]
        found: list[Any] = []
        missing: dict[str, list[int]] = {}
        for i, (key, value) in enumerate(zip(keys, await self.store.get_many(keys), strict=True)):
            entry = None
            if value is not None:
                try:
                    entry = read(value)
                except codec.Undecodable:
                    entry = None
            if entry is None:
                missing.setdefault(key, []).append(i)
            found.append(entry)
        hits = len(items) - sum(len(v) for v in missing.values())
        self._count(call, hits, len(missing))
        if hits:
            ctx.note_cache_hits(hits)
        return found, missing

    async def _keep(self, call: Call, ctx: RequestContext, items: Sequence[tuple[Any, bytes]]) -> None:
        """Store (item, value) pairs under the keys of the revision now loaded (the miss may have
        loaded the model for the first time)."""
        if items:
            base = self._base(call, ctx)
            await self.store.put_many([(item_key(base, item), value) for item, value in items])

    async def _embed(self, call: Call, payload: EmbedInput, ctx: RequestContext, next: Next) -> EmbedResult:
        inputs = list(payload.inputs)
        found, missing = await self._lookup(call, ctx, inputs, codec.read_embed_item)
        vectors: list[list[float]] = [[] for _ in inputs]
        tokens = [0] * len(inputs)
        truncated = [False] * len(inputs)
        model, normalized, usage, timing = "", False, Usage(), Timing()
        for i, entry in enumerate(found):
            if entry is not None:
                vectors[i], _, model, normalized = entry
        if missing:
            firsts = [indices[0] for indices in missing.values()]
            sub = call.but(payload=replace(payload, inputs=[inputs[i] for i in firsts]))
            computed = expect(await next(sub, ctx), EmbedResult)
            model, normalized, usage, timing = computed.model, computed.normalized, computed.usage, computed.timing
            keep: list[tuple[Any, bytes]] = []
            for j, indices in enumerate(missing.values()):
                for i in indices:
                    vectors[i] = computed.vectors[j]
                    tokens[i] = computed.tokens[j]
                    truncated[i] = computed.truncated[j]
                if not computed.truncated[j]:
                    keep.append(
                        (
                            inputs[firsts[j]],
                            codec.embed_item(computed.vectors[j], computed.tokens[j], model, normalized),
                        )
                    )
            await self._keep(call, ctx, keep)
        else:
            timing = Timing(total_ms=ctx.elapsed_ms())
        for i, entry in enumerate(found):
            if entry is not None:
                tokens[i] = entry[1]
        dimension = len(vectors[0]) if vectors else 0
        return EmbedResult(
            vectors=vectors,
            tokens=tokens,
            truncated=truncated,
            dimension=dimension,
            model=model,
            normalized=normalized,
            usage=usage,
            timing=timing,
        )

    async def _nli(self, call: Call, payload: NliInput, ctx: RequestContext, next: Next) -> NliResult:
        pairs = [tuple(p) for p in payload.pairs]
        found, missing = await self._lookup(call, ctx, pairs, codec.read_nli_item)
        predictions = [entry[0] if entry is not None else None for entry in found]
        model = next_model = ""
        for entry in found:
            if entry is not None:
                model = entry[2]
        usage, timing = Usage(), Timing(total_ms=ctx.elapsed_ms())
        if missing:
            firsts = [indices[0] for indices in missing.values()]
            sub = call.but(payload=replace(payload, pairs=[payload.pairs[i] for i in firsts]))
            computed = expect(await next(sub, ctx), NliResult)
            next_model, usage, timing = computed.model, computed.usage, computed.timing
            for j, indices in enumerate(missing.values()):
                for i in indices:
                    predictions[i] = computed.predictions[j]
            await self._keep(
                call,
                ctx,
                [(pairs[firsts[j]], codec.nli_item(p, 0, next_model)) for j, p in enumerate(computed.predictions)],
            )
        done = [p for p in predictions if p is not None]
        assert len(done) == len(predictions), "every pair was either cached or computed"
        return NliResult(predictions=done, model=next_model or model, usage=usage, timing=timing)

    # -- whole answers --------------------------------------------------------------------------------
    async def _whole(
        self, call: Call, payload: ClassifyInput | ChatInput | GenerateInput, ctx: RequestContext, next: Next
    ) -> Result:
        item = whole_item(payload)
        [value] = await self.store.get_many([item_key(self._base(call, ctx), item)])
        cached: Result | None = None
        if value is not None:
            try:
                cached = (
                    codec.read_classify_result(value)
                    if isinstance(payload, ClassifyInput)
                    else codec.read_chat_result(value)
                )
            except codec.Undecodable:
                cached = None
        if cached is not None:
            self._count(call, 1, 0)
            ctx.note_cache_hits(1)
            return replace(cached, timing=Timing(total_ms=ctx.elapsed_ms()))
        self._count(call, 0, 1)
        result = await next(call, ctx)
        if isinstance(result, ClassifyResult):
            await self._keep(call, ctx, [(item, codec.classify_result(result))])
        elif isinstance(result, ChatResult | GenerateResult) and self._keepable(call, ctx, result):
            await self._keep(call, ctx, [(item, codec.chat_result(result))])
        return result

    @staticmethod
    def _keepable(call: Call, ctx: RequestContext, answer: ChatResult | GenerateResult | Done) -> bool:
        """A whole answer from the planned target: not cut short, not from a cut conversation."""
        assert call.target is not None
        return (
            answer.finish_reason != "length"
            and ctx.notes.truncation is None
            and answer.provider in ("", call.target.provider.name)
        )

    # -- streams -------------------------------------------------------------------------------------
    def stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        # A continuation (streaming failover) is the rest of another answer, never a whole one.
        if ctx.cache is False or call.continuation is not None or not self._deterministic(call, ctx):
            return next(call, ctx)
        return self._stream(call, ctx, next)

    async def _stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        """A hit replays the recorded events (Done last, stamped with this lookup's timing); a miss
        passes events through as they come and keeps them once the stream ended with Done."""
        assert isinstance(call.payload, ChatInput | GenerateInput)
        key = item_key(self._base(call, ctx, stream=True), whole_item(call.payload))
        [value] = await self.store.get_many([key])
        replay: list[ChatEvent] | None = None
        if value is not None:
            try:
                replay = codec.read_events(value)
            except codec.Undecodable:
                replay = None
        if replay is not None:
            self._count(call, 1, 0)
            ctx.note_cache_hits(1)
            for event in replay:
                if isinstance(event, UsageEvent):
                    event = UsageEvent(Usage())
                elif isinstance(event, Done):
                    event = replace(event, timing=Timing(total_ms=ctx.elapsed_ms()))
                yield event
            return
        self._count(call, 0, 1)
        recorded: list[ChatEvent] = []
        source = next(call, ctx)
        async with aclosing(source):  # type: ignore[type-var]
            async for event in source:
                recorded.append(event)
                if isinstance(event, Done) and self._keepable(call, ctx, event):
                    # Kept before Done goes on: the consumer may stop reading once it has it.
                    key = item_key(self._base(call, ctx, stream=True), whole_item(call.payload))
                    await self.store.put_many([(key, codec.events(recorded))])
                yield event
