"""Chat on models that have only a raw-prompt endpoint: the gateway applies their chat template.

llama.cpp's ``/completion``, TGI, vLLM and any OpenAI-compatible ``/v1/completions`` serve models
whose chat endpoint is missing or applies the wrong template.  A provider lists them in
``completion_only``; a Chat call to one becomes a Generate call here: the conversation (and its
tools) rendered by the model's template with the assistant's turn opened, stopping where the
template says the turn ends, and the answer turned back into the assistant's message.  Streams
need no translation: a Generate stream's events are a Chat stream's.

The stage runs after the parameter check, on the target the plan chose, so the caller's
parameters were checked as a chat call's.  Every other call passes through after one dict lookup.
"""

from __future__ import annotations

import fnmatch
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import replace

from ratatoskr_client.errors import FailedPrecondition, InvalidArgument
from ratatoskr_client.types import ChatEvent, ChatResult, GenerateResult, Message
from ratatoskr_server.config import ProviderSettings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import Call, Candidate, ChatInput, GenerateInput, Result, expect
from ratatoskr_server.pipeline.chain import Next, NextStream, Stage
from ratatoskr_server.policy.templates.completion import completion_prompt, end_of_turn
from ratatoskr_server.policy.templates.render import TemplateRenderer
from ratatoskr_server.providers.capabilities import Capability

#: (provider, model) decisions remembered; model names come from callers, so the table is bounded.
MAX_REMEMBERED_MODELS = 4096


class TemplateStage(Stage):
    def __init__(
        self, providers: Mapping[str, ProviderSettings], renderer: TemplateRenderer, max_stop_sequences: int
    ) -> None:
        self.renderer = renderer
        self.max_stop_sequences = max_stop_sequences
        #: Providers with completion-only models, and their globs: the only ones that cost more than a lookup.
        self._globs = {name: tuple(p.completion_only) for name, p in providers.items() if p.completion_only}
        self._decided: dict[tuple[str, str], bool] = {}

    def applies(self, call: Call) -> bool:
        """Whether ``call`` is a chat call to a completion-only model."""
        target = call.target
        if call.task is not Capability.CHAT or target is None:
            return False
        globs = self._globs.get(target.provider.name)
        if globs is None:
            return False
        key = (target.provider.name, target.model)
        decided = self._decided.get(key)
        if decided is None:
            decided = any(fnmatch.fnmatchcase(target.model, glob) for glob in globs)
            if len(self._decided) >= MAX_REMEMBERED_MODELS:
                self._decided.clear()
            self._decided[key] = decided
        return decided

    async def as_generate(self, call: Call, ctx: RequestContext) -> Call:
        """The chat call as the Generate call the completion endpoint answers."""
        payload, options, target = call.payload, call.options, call.target
        assert isinstance(payload, ChatInput) and options is not None and target is not None
        # The names RenderChatTemplate looks a template up by: as asked, as resolved, as the upstream knows it.
        try:
            source = await self.renderer.sources.find(call.model, target.id, target.model)
        except FailedPrecondition as err:
            raise FailedPrecondition(
                f"{_where(target)} is completion_only, so Chat needs its chat template: {err.message}"
            ) from None
        rendered = await self.renderer.render_source(
            source, payload.messages, add_generation_prompt=True, tools=options.tools, count=False
        )
        # The template carried the tools; what it cannot carry is noted, not silently ignored.
        unhonoured = [name for name in ("tool_choice", "parallel_tool_calls") if getattr(options, name) is not None]
        ctx.note_dropped(unhonoured)
        options = replace(
            options,
            stop=self._stops(options.stop, end_of_turn(source), target),
            tools=[],
            tool_choice=None,
            parallel_tool_calls=None,
        )
        prompt = completion_prompt(source, rendered.text)
        if call.continuation is not None:
            # Resuming another model's broken answer: the raw prompt is a prefill by nature.
            prompt += call.continuation.text
        return call.but(task=Capability.GENERATE, payload=GenerateInput(prompt), options=options, continuation=None)

    def _stops(self, caller: list[str], turn_end: tuple[str, ...], target: Candidate) -> list[str]:
        """The caller's stop strings and the template's end of turn, each once.

        The end of turn always goes (without it the model writes the user's next turn too); the
        caller's share what is left of ``limits.max_stop_sequences`` and are refused, never
        dropped, when they do not fit.
        """
        stops = list(dict.fromkeys([*caller, *turn_end]))
        room = max(self.max_stop_sequences, len(turn_end))
        if len(stops) > room:
            raise InvalidArgument(
                f"stop takes at most {room - len(turn_end)} strings for {_where(target)}: its chat template's "
                f"end of turn ({', '.join(turn_end)}) takes {len(turn_end)} of the {self.max_stop_sequences} "
                "(limits.max_stop_sequences)"
            )
        return stops

    async def unary(self, call: Call, ctx: RequestContext, next: Next) -> Result:
        if not self.applies(call):
            return await next(call, ctx)
        generated = expect(await next(await self.as_generate(call, ctx), ctx), GenerateResult)
        return ChatResult(
            message=Message(role="assistant", content=generated.text),
            finish_reason=generated.finish_reason,
            usage=generated.usage,
            timing=generated.timing,
            provider=generated.provider,
            model=generated.model,
            notes=generated.notes,
        )

    def stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        if not self.applies(call):
            return next(call, ctx)
        return self._generate_stream(call, ctx, next)

    async def _generate_stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        events = next(await self.as_generate(call, ctx), ctx)
        async with aclosing(events):  # type: ignore[type-var]
            async for event in events:
                yield event


def _where(target: Candidate) -> str:
    return f"model '{target.model}' of provider '{target.provider.name}'"
