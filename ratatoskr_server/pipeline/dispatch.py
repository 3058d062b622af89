"""The end of the chain: the call goes to its target provider, bounded by the request's deadline.

Here and nowhere else a task meets a capability method, and the answer is stamped with who
answered and where the time went.  HTTP providers are also bounded by ``http.total_timeout_s``;
the local provider takes the deadline itself (its queue drops work nobody waits for).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace

from ratatoskr_client.errors import DeadlineExceeded, FailedPrecondition
from ratatoskr_client.types import ChatEvent, Done, Timing, Usage, UsageEvent
from ratatoskr_server.context import Answered, RequestContext
from ratatoskr_server.pipeline.call import (
    Call,
    Candidate,
    ChatInput,
    ClassifyInput,
    EmbedInput,
    GenerateInput,
    NliInput,
    Result,
)
from ratatoskr_server.providers.capabilities import (
    as_chat,
    as_classify,
    as_continuing,
    as_embed,
    as_generate,
    as_nli,
)
from ratatoskr_server.providers.local import LocalProvider
from ratatoskr_server.providers.scrub import scrub_events

_TOTAL = "http.total_timeout_s"


def _target(call: Call) -> Candidate:
    if call.target is None:
        raise AssertionError("a call reached dispatch without a target: the plan stage is missing")
    return call.target


def _refused(candidate: Candidate, what: str) -> FailedPrecondition:
    provider = candidate.provider
    return FailedPrecondition(f"provider '{provider.name}' ({provider.kind}) does not offer {what}")


class Dispatch:
    def __init__(self, total_timeout_s: float) -> None:
        self.total_timeout_s = total_timeout_s

    def _cap(self, candidate: Candidate) -> float | None:
        return None if isinstance(candidate.provider, LocalProvider) else self.total_timeout_s

    async def unary(self, call: Call, ctx: RequestContext) -> Result:
        target = _target(call)
        _note_target(ctx, call, target)
        started = time.perf_counter()
        try:
            if isinstance(target.provider, LocalProvider):
                result = await self._answer(call, target, ctx)  # the pool keeps the deadline itself
            else:
                async with ctx.bounded("no answer", self.total_timeout_s, _TOTAL):
                    result = await self._answer(call, target, ctx)
        finally:
            ctx.answered.upstream_s += time.perf_counter() - started
        _note_result(ctx, result)
        return result

    async def _answer(self, call: Call, target: Candidate, ctx: RequestContext) -> Result:
        provider, model, payload = target.provider, target.model, call.payload
        started = time.perf_counter()
        if isinstance(payload, EmbedInput):
            embedder = as_embed(provider)
            if embedder is None:
                raise _refused(target, "embeddings")
            embedded = await embedder.embed(model, payload.inputs, truncate=payload.truncate, deadline=ctx.deadline)
            if isinstance(provider, LocalProvider):
                return embedded
            return replace(embedded, timing=_elapsed(started))
        if isinstance(payload, NliInput):
            judge = as_nli(provider)
            if judge is None:
                raise _refused(target, "NLI")
            return await judge.nli(model, payload.pairs, truncate=payload.truncate, deadline=ctx.deadline)
        if isinstance(payload, ClassifyInput):
            classifier = as_classify(provider)
            if classifier is None:
                raise _refused(target, "zero-shot classification")
            classified = await classifier.classify(
                model,
                payload.text,
                payload.labels,
                multi_label=payload.multi_label,
                hypothesis_template=payload.hypothesis_template,
                deadline=ctx.deadline,
            )
            if isinstance(provider, LocalProvider):
                return classified
            return replace(classified, timing=_elapsed(started))
        options = call.options
        assert options is not None, "chat and generate calls carry options"
        if isinstance(payload, ChatInput):
            chatter = as_chat(provider)
            if chatter is None:
                raise _refused(target, "chat")
            # What the upstream wrote is scrubbed of what it was sent (keys it may echo).
            chat = provider.scrubber.chat_result(await chatter.chat(model, payload.messages, options))
            return replace(
                chat, timing=_answer_timing(started, chat.usage), provider=provider.name, model=chat.model or model
            )
        generator = as_generate(provider)
        if generator is None:
            raise _refused(target, "raw-prompt generation")
        assert isinstance(payload, GenerateInput)
        text = provider.scrubber.generate_result(await generator.generate(model, payload.prompt, options))
        return replace(
            text, timing=_answer_timing(started, text.usage), provider=provider.name, model=text.model or model
        )

    def stream(self, call: Call, ctx: RequestContext) -> AsyncIterator[ChatEvent]:
        target = _target(call)
        provider, model, payload, options = target.provider, target.model, call.payload, call.options
        assert options is not None, "streams are chat and generate calls, which carry options"
        if isinstance(payload, ChatInput) and call.continuation is not None:
            continuer = as_continuing(provider)
            if continuer is None:
                raise _refused(target, "continuing another model's answer")
            resumed = call.continuation
            source = continuer.continue_stream(model, payload.messages, resumed.text, resumed.mode, options)
        elif isinstance(payload, ChatInput):
            chatter = as_chat(provider)
            if chatter is None:
                raise _refused(target, "chat")
            source = chatter.chat_stream(model, payload.messages, options)
        else:
            generator = as_generate(provider)
            if generator is None:
                raise _refused(target, "raw-prompt generation")
            assert isinstance(payload, GenerateInput)
            source = generator.generate_stream(model, payload.prompt, options)
        if provider.scrubber:
            source = scrub_events(source, provider.scrubber)
        _note_target(ctx, call, target)
        return self._relay(target, source, ctx)

    async def _relay(
        self, target: Candidate, source: AsyncIterator[ChatEvent], ctx: RequestContext
    ) -> AsyncIterator[ChatEvent]:
        """Pass events through one by one (no buffering), stamping the last one with who answered and timing.

        The deadline bounds each wait for the next event, not the time an event spends with the
        consumer: a timer must never cancel a generator suspended in its consumer's hands.
        """
        arrived = time.perf_counter()
        cap = self._cap(target)
        budget = ctx.budget(cap)
        loop = asyncio.get_running_loop()
        deadline = None if budget is None else loop.time() + budget
        first: float | None = None
        usage = Usage()
        answered = ctx.answered
        async with aclosing(source):  # type: ignore[type-var]
            iterator = aiter(source)
            while True:
                waited = time.perf_counter()
                try:
                    async with asyncio.timeout_at(deadline):
                        event = await anext(iterator)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise DeadlineExceeded(f"the stream did not finish within {ctx.limit(cap, _TOTAL)}") from None
                finally:
                    answered.upstream_s += time.perf_counter() - waited
                now = time.perf_counter()
                if first is None:
                    first = now
                    answered.first_event_ms = (now - ctx.arrived) * 1000
                if isinstance(event, UsageEvent):
                    usage = event.usage
                if isinstance(event, Done):
                    event = Done(
                        finish_reason=event.finish_reason,
                        timing=Timing(
                            queue_ms=(first - arrived) * 1000,
                            inference_ms=(now - first) * 1000,
                            total_ms=(now - arrived) * 1000,
                            input_tokens=usage.prompt_tokens,
                            output_tokens=usage.completion_tokens,
                        ),
                        provider=target.provider.name,
                        model=target.model,
                    )
                    _note_done(answered, event)
                yield event


def _note_target(ctx: RequestContext, call: Call, target: Candidate) -> None:
    """Who this attempt goes to (a retry or fallback overwrites it: the last attempt is the answer)."""
    answered = ctx.answered
    answered.provider = target.provider.name
    answered.backend = target.provider.kind
    answered.request_model = target.model
    answered.options = call.options


def _note_result(ctx: RequestContext, result: Result) -> None:
    answered = ctx.answered
    timing = result.timing
    answered.queue_ms = timing.queue_ms
    answered.inference_ms = timing.inference_ms
    answered.input_tokens = timing.input_tokens or result.usage.prompt_tokens
    answered.output_tokens = timing.output_tokens or result.usage.completion_tokens
    answered.response_model = getattr(result, "model", "") or answered.request_model
    answered.finish_reason = getattr(result, "finish_reason", "")


def _note_done(answered: Answered, done: Done) -> None:
    timing = done.timing
    answered.queue_ms = timing.queue_ms
    answered.inference_ms = timing.inference_ms
    answered.input_tokens = timing.input_tokens
    answered.output_tokens = timing.output_tokens
    answered.response_model = done.model or answered.request_model
    answered.finish_reason = done.finish_reason


def _elapsed(started: float) -> Timing:
    elapsed = (time.perf_counter() - started) * 1000
    return Timing(inference_ms=elapsed, total_ms=elapsed)


def _answer_timing(started: float, usage: Usage) -> Timing:
    elapsed = (time.perf_counter() - started) * 1000
    return Timing(
        inference_ms=elapsed,
        total_ms=elapsed,
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
    )
