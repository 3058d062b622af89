"""Rendering a conversation with its model's chat template: what RenderChatTemplate answers.

Compiled templates are kept per source file and variant.  Rendering runs in a worker thread (a
template is code, and a long conversation is real work); the engine's own limits end a runaway one.
Token counts come from a tokenizer when one is known for the model; otherwise they are an estimate
(about four characters a token), and the answer says so.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

from ratatoskr_client.types import Message, RenderedPrompt, ToolDefinition
from ratatoskr_server.config import TemplateSettings
from ratatoskr_server.policy.templates.data import Limits, message_data, tool_data
from ratatoskr_server.policy.templates.sources import Family, LocalFolder, TemplateSource, TemplateSources

if TYPE_CHECKING:
    from ratatoskr_server.policy.templates.engine import ChatTemplate

#: Characters per token for an estimate: the usual rule of thumb for English BPE vocabularies.
CHARS_PER_TOKEN = 4


#: What an estimate adds per message for its role and delimiters (OpenAI documents 3-4 for its formats).
TOKENS_PER_MESSAGE = 4


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_messages(messages: Sequence[Message], tools_json: str = "") -> int:
    """An estimate of a conversation's prompt without its template: contents, tool calls, tools, delimiters."""
    chars = len(tools_json)
    for m in messages:
        chars += len(m.content)
        for call in m.tool_calls:
            chars += len(call.name) + len(call.arguments)
    return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages) + 3


@dataclass(frozen=True, slots=True)
class PromptCounter:
    """Counts the prompt a conversation makes for one model: exactly when its template and vocabulary
    are known (render, then tokenize), else as an estimate of the messages.

    ``count`` of an exact counter blocks (a template render and a tokenization): call it in a worker thread.
    """

    template: ChatTemplate | None = None
    tokenizer: Tokenizer | None = None
    #: The model's trained window as its template file says; 0: unknown.
    context_length: int = 0

    @property
    def exact(self) -> bool:
        return self.template is not None and self.tokenizer is not None

    def count(self, messages: Sequence[Message], tools: Sequence[ToolDefinition] = ()) -> int:
        if self.template is None or self.tokenizer is None:
            return estimate_messages(messages, json.dumps([tool_data(t) for t in tools]) if tools else "")
        data = [message_data(m) for m in messages]
        tool_list: list[dict[str, Any]] | None = [tool_data(t) for t in tools] or None
        prompt = self.template.render(data, add_generation_prompt=True, tools=tool_list)
        return len(self.tokenizer.encode(prompt, add_special_tokens=False).ids)


@dataclass(frozen=True, slots=True)
class TextCounts:
    """Token counts of plain texts in a model's own vocabulary, or estimates said to be such."""

    counts: list[int]
    estimated: bool
    #: Where the vocabulary came from (a GGUF, a tokenizer.json …); empty for an estimate.
    tokenizer: str = ""


class TemplateRenderer:
    def __init__(
        self, settings: TemplateSettings, local_folder: LocalFolder | None = None, family: Family | None = None
    ) -> None:
        self.settings = settings
        self.sources = TemplateSources(settings, local_folder, family)
        self._compiled: dict[tuple[int, str], ChatTemplate] = {}

    def _template(self, source: TemplateSource, variant: str, text: str) -> ChatTemplate:
        key = (id(source), variant)
        template = self._compiled.get(key)
        if template is None:
            name = source.name if variant == "default" else f"{source.name}:{variant}"
            limits = Limits(self.settings.render_timeout_s, self.settings.max_rendered_chars)
            from ratatoskr_server.policy.templates.engine import ChatTemplate  # Jinja loads on first use

            template = ChatTemplate(name, text, dict(source.special_tokens), limits)
            self._compiled[key] = template
        return template

    async def counter(self, names: Sequence[str], *, with_tools: bool = False) -> PromptCounter:
        """How to count prompts for the model known by ``names``: exact when a tokenizer is known."""
        source = await self.sources.lookup(*names)
        if source is None:
            return PromptCounter()
        if source.tokenizer is None:
            return PromptCounter(context_length=source.context_length)
        variant, text = source.pick(with_tools)
        template = await asyncio.to_thread(self._template, source, variant, text)
        return PromptCounter(template, source.tokenizer, source.context_length)

    async def render(
        self,
        names: Sequence[str],
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool,
        tools: Sequence[ToolDefinition] = (),
    ) -> RenderedPrompt:
        source = await self.sources.find(*names)
        return await self.render_source(source, messages, add_generation_prompt=add_generation_prompt, tools=tools)

    async def render_source(
        self,
        source: TemplateSource,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool,
        tools: Sequence[ToolDefinition] = (),
        count: bool = True,
    ) -> RenderedPrompt:
        """``render`` with the source already found (a caller that needs it too looks it up once);
        ``count=False`` leaves the count an estimate, for a prompt that is sent rather than measured."""
        variant, text = source.pick(bool(tools))
        template = await asyncio.to_thread(self._template, source, variant, text)  # compiling is real work too
        data = [message_data(m) for m in messages]
        tool_list = [tool_data(t) for t in tools] or None
        tokenizer = source.tokenizer if count else None

        def render_and_count() -> tuple[str, int | None]:
            prompt = template.render(data, add_generation_prompt=add_generation_prompt, tools=tool_list)
            # The prompt already holds its special tokens as text (bos included): none are added.
            tokens = len(tokenizer.encode(prompt, add_special_tokens=False).ids) if tokenizer is not None else None
            return prompt, tokens

        prompt, tokens = await asyncio.to_thread(render_and_count)
        if tokens is None:
            return RenderedPrompt(prompt, estimate_tokens(prompt), template.name, tokens_estimated=True)
        return RenderedPrompt(prompt, tokens, template.name, tokens_estimated=False)

    async def count_texts(self, names: Sequence[str], texts: Sequence[str]) -> TextCounts:
        """Tokens of ``texts`` as the model would see them inside a prompt (no BOS added).

        The vocabulary is the one its template source carries; a model with no known source, or a
        source without a vocabulary, gets the estimate, flagged, rather than a refusal: counting
        text needs no template.
        """
        source = await self.sources.lookup(*names)
        tokenizer = source.tokenizer if source is not None else None
        if source is None or tokenizer is None:
            return TextCounts([estimate_tokens(t) for t in texts], estimated=True)

        def count() -> list[int]:
            return [len(e.ids) for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]

        return TextCounts(await asyncio.to_thread(count), estimated=False, tokenizer=source.name)
