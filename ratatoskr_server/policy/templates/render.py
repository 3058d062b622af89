"""Rendering a conversation with its model's chat template: what RenderChatTemplate answers.

Compiled templates are kept per source file and variant.  Rendering runs in a worker thread (a
template is code, and a long conversation is real work); the engine's own limits end a runaway one.
Token counts come from a tokenizer when one is known for the model; otherwise they are an estimate
(about four characters a token), and the answer says so.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ratatoskr_client.errors import FailedPrecondition
from ratatoskr_client.types import Message, RenderedPrompt, ToolDefinition
from ratatoskr_server.config import TemplateSettings
from ratatoskr_server.policy.templates.engine import ChatTemplate, Limits, message_data, tool_data
from ratatoskr_server.policy.templates.sources import LocalFolder, TemplateSource, TemplateSources

#: Characters per token for an estimate: the usual rule of thumb for English BPE vocabularies.
CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True, slots=True)
class TextCounts:
    """Token counts of plain texts in a model's own vocabulary, or estimates said to be such."""

    counts: list[int]
    estimated: bool
    #: Where the vocabulary came from (a GGUF, a tokenizer.json …); empty for an estimate.
    tokenizer: str = ""


class TemplateRenderer:
    def __init__(self, settings: TemplateSettings, local_folder: LocalFolder | None = None) -> None:
        self.settings = settings
        self.sources = TemplateSources(settings, local_folder)
        self._compiled: dict[tuple[int, str], ChatTemplate] = {}

    def _template(self, source: TemplateSource, variant: str, text: str) -> ChatTemplate:
        key = (id(source), variant)
        template = self._compiled.get(key)
        if template is None:
            name = source.name if variant == "default" else f"{source.name}:{variant}"
            limits = Limits(self.settings.render_timeout_s, self.settings.max_rendered_chars)
            template = ChatTemplate(name, text, dict(source.special_tokens), limits)
            self._compiled[key] = template
        return template

    async def render(
        self,
        names: Sequence[str],
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool,
        tools: Sequence[ToolDefinition] = (),
    ) -> RenderedPrompt:
        source = await self.sources.find(*names)
        variant, text = source.pick(bool(tools))
        template = await asyncio.to_thread(self._template, source, variant, text)  # compiling is real work too
        data = [message_data(m) for m in messages]
        tool_list = [tool_data(t) for t in tools] or None
        tokenizer = source.tokenizer

        def render_and_count() -> tuple[str, int | None]:
            prompt = template.render(data, add_generation_prompt=add_generation_prompt, tools=tool_list)
            # The prompt already holds its special tokens as text (bos included): none are added.
            count = len(tokenizer.encode(prompt, add_special_tokens=False).ids) if tokenizer is not None else None
            return prompt, count

        prompt, count = await asyncio.to_thread(render_and_count)
        if count is None:
            return RenderedPrompt(prompt, estimate_tokens(prompt), template.name, tokens_estimated=True)
        return RenderedPrompt(prompt, count, template.name, tokens_estimated=False)

    async def count_texts(self, names: Sequence[str], texts: Sequence[str]) -> TextCounts:
        """Tokens of ``texts`` as the model would see them inside a prompt (no BOS added).

        The vocabulary is the one its template source carries; a model with no known source, or a
        source without a vocabulary, gets the estimate, flagged, rather than a refusal: counting
        text needs no template.
        """
        try:
            source: TemplateSource | None = await self.sources.find(*names)
        except FailedPrecondition:
            source = None
        tokenizer = source.tokenizer if source is not None else None
        if source is None or tokenizer is None:
            return TextCounts([estimate_tokens(t) for t in texts], estimated=True)

        def count() -> list[int]:
            return [len(e.ids) for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]

        return TextCounts(await asyncio.to_thread(count), estimated=False, tokenizer=source.name)
