"""Configured secrets never reach a client, even when an upstream echoes them in an answer.

An upstream can only repeat what it was sent, and it is sent our credentials: the API key, the
credential-named headers and query values, the base URL's user-info (``ProviderSettings.secret_values``
lists them). Echo servers, debugging proxies, a model asked to repeat its request, or a catalogue that
names a deployment after its key can all put one into an answer, a tool call's arguments or a model
id. Error messages are already scrubbed where they are made (``providers/errors.py``); this module
covers everything else a provider hands back.

It is not the log redactor (``ratatoskr_server.redact.scrub``) on purpose, in three ways:

* Only *configured* values are replaced, never guesses. The log redactor also masks anything shaped
  like a key (``sk-…``, ``Bearer …``, ``hf_…``); in a log that costs nothing, in an answer it would
  rewrite the caller's own data (a model explaining key formats, code samples with placeholders).
* Values shorter than ``MIN_SECRET_CHARS`` are ignored (see there); the log redactor takes 4.
* The marker is ``REDACTED``, not ``redact.MASK``: answers are read as Markdown, where a run of
  asterisks is emphasis or, on a line of its own, a horizontal rule.

The secrets themselves come from one place, ``ProviderSettings.secret_values()``, which the log
redactor and the error mapping use too.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ratatoskr_client.types import (
    ChatEvent,
    ChatResult,
    ContentDelta,
    Done,
    GenerateResult,
    Message,
    ReasoningDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    D = TypeVar("D", bound=DataclassInstance)

#: What a secret is replaced with in anything a client receives.
REDACTED = "[redacted]"

#: Configured values shorter than this are not scrubbed from answers. Credential-named headers carry
#: short flags too ("X-Auth-Mode: basic", "session: 1"), and replacing every "basic" or "1" in an
#: answer would break it for everyone, every time, to hide a value that guards nothing. Real keys
#: and passwords are far longer (an HF token has 37 characters, OpenAI and Anthropic keys more).
MIN_SECRET_CHARS = 8

_Channel = tuple[Literal["content", "reasoning", "tool"], int]


def _replaced(value: D, **changes: Any) -> D:
    """``value`` itself when scrubbing changed nothing (the common case costs no copy), else a copy."""
    if all(getattr(value, name) == new for name, new in changes.items()):
        return value
    return replace(value, **changes)


def _spellings(secret: str) -> set[str]:
    """The secret as sent, and as it reads inside a JSON string (tool call arguments are JSON text)."""
    return {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}


class Scrubber:
    """Replaces configured secrets in text and in the domain results that carry upstream text.

    Build one from ``Provider.secrets`` (what that upstream was sent is what it can echo), or from
    ``Settings.secret_values()`` for every provider at once. Immutable, so one instance may serve any
    number of concurrent calls; ``scrub_events`` keeps a stream's state, not the scrubber.
    """

    __slots__ = ("_longest", "_needles", "_pattern", "ignored")

    def __init__(self, secrets: Iterable[str]) -> None:
        values = {s for s in secrets if s}
        kept = {s for s in values if len(s) >= MIN_SECRET_CHARS}
        #: How many configured values are too short to scrub: a caller may warn about them, by count,
        #: never by value.
        self.ignored = len(values) - len(kept)
        needles = {spelling for secret in kept for spelling in _spellings(secret)}
        # Longest first: the regex takes the first alternative that matches, so a secret that contains
        # another ("user:password" and "password") is replaced whole.
        self._needles = tuple(sorted(needles, key=lambda n: (-len(n), n)))
        self._pattern = re.compile("|".join(map(re.escape, self._needles))) if needles else None
        self._longest = len(self._needles[0]) if needles else 0

    def __bool__(self) -> bool:
        """False when there is nothing to scrub, so a caller can skip wrapping a stream at all."""
        return self._pattern is not None

    def __repr__(self) -> str:
        # Never the values: a scrubber that ends up in a log line or a traceback must not leak them.
        return f"Scrubber({len(self._needles)} spellings, {self.ignored} ignored as too short)"

    @property
    def longest(self) -> int:
        """Length of the longest spelling: a stream holds back at most one character less."""
        return self._longest

    def scrub(self, text: str) -> str:
        """``text`` with every configured secret replaced by ``REDACTED``."""
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(REDACTED, text)

    def message(self, message: Message) -> Message:
        calls = [self.tool_call(call) for call in message.tool_calls]
        return _replaced(message, content=self.scrub(message.content), name=self.scrub(message.name), tool_calls=calls)

    def tool_call(self, call: ToolCall) -> ToolCall:
        return _replaced(call, id=self.scrub(call.id), name=self.scrub(call.name), arguments=self.scrub(call.arguments))

    def chat_result(self, result: ChatResult) -> ChatResult:
        """The answer, reasoning, tool calls and model name scrubbed; usage, timing and the rest as given."""
        if not self:
            return result
        return _replaced(
            result,
            message=self.message(result.message),
            reasoning=self.scrub(result.reasoning),
            model=self.scrub(result.model),
            finish_reason=self.scrub(result.finish_reason),
        )

    def generate_result(self, result: GenerateResult) -> GenerateResult:
        if not self:
            return result
        return _replaced(
            result,
            text=self.scrub(result.text),
            model=self.scrub(result.model),
            finish_reason=self.scrub(result.finish_reason),
        )

    def model_ids(self, ids: Iterable[str]) -> list[str]:
        """Model ids as an upstream listed them, scrubbed, in the same order and number."""
        return [self.scrub(model_id) for model_id in ids]

    def event(self, event: ChatEvent) -> ChatEvent:
        """One event scrubbed on its own: right for every event except deltas, which may split a secret."""
        if not self:
            return event
        match event:
            case ContentDelta(text=text) | ReasoningDelta(text=text):
                return _replaced(event, text=self.scrub(text))
            case ToolCallDelta(arguments=arguments):
                return _replaced(event, arguments=self.scrub(arguments))
            case ToolCallStart(id=call_id, name=name):
                return _replaced(event, id=self.scrub(call_id), name=self.scrub(name))
            case Done(model=model, finish_reason=finish):
                return _replaced(event, model=self.scrub(model), finish_reason=self.scrub(finish))
        return event

    def release(self, buffered: str) -> tuple[str, str]:
        """(what can be sent now, scrubbed; what must wait) for the text one delta channel holds.

        What waits is the shortest tail that could still be the start of a secret: from the earliest
        position, after the last secret replaced, whose rest is a proper prefix of a spelling. Every
        secret starting before it lies wholly inside ``buffered`` and is replaced here, so the sent
        text and the tail, scrubbed later with whatever follows it, make exactly ``scrub`` of the
        whole. The tail is at most ``longest - 1`` characters, and empty for text that ends nowhere
        near a secret.
        """
        if self._pattern is None:
            return buffered, ""
        out: list[str] = []
        pos = 0
        while True:
            # Where the text after the last replaced secret could start an unfinished one.
            hold = self._hold_from(buffered, pos)
            match = self._pattern.search(buffered, pos, hold + self._longest)
            if match is None or match.start() >= hold:
                break
            out += (buffered[pos : match.start()], REDACTED)
            pos = match.end()
        out.append(buffered[pos:hold])
        return "".join(out), buffered[hold:]

    def _hold_from(self, text: str, start: int) -> int:
        """The earliest index from ``start`` whose rest of ``text`` is a proper prefix of a spelling.

        ``len(text)`` when there is none: nothing in ``text`` can be the start of an unfinished secret.
        """
        best = len(text)
        for needle in self._needles:
            # Only a start closer to the end than the needle is long can be an unfinished needle.
            k = text.find(needle[0], max(start, len(text) - len(needle) + 1), best)
            while k != -1:
                if needle.startswith(text[k:]):
                    best = k
                    break
                k = text.find(needle[0], k + 1, best)
        return best


def _channel(event: ChatEvent) -> tuple[_Channel, str] | None:
    """The channel a delta belongs to and its text; None for every other event."""
    match event:
        case ContentDelta(text=text):
            return ("content", 0), text
        case ReasoningDelta(text=text):
            return ("reasoning", 0), text
        case ToolCallDelta(index=index, arguments=text):
            return ("tool", index), text
    return None


def _delta(channel: _Channel, text: str) -> ChatEvent:
    kind, index = channel
    if kind == "content":
        return ContentDelta(text)
    if kind == "reasoning":
        return ReasoningDelta(text)
    return ToolCallDelta(index, text)


async def scrub_events(events: AsyncIterator[ChatEvent], scrubber: Scrubber) -> AsyncGenerator[ChatEvent, None]:
    """``events`` with every configured secret replaced, also one split across consecutive deltas.

    Content, reasoning and each tool call's arguments are separate channels (a client joins each
    on its own, so a secret can only be spelled out within one). Each channel holds back the tail
    that could still be the start of a secret (``Scrubber.release``), at most ``longest - 1``
    characters. Held tails are sent, scrubbed, before any other event (a tool call's start or end,
    usage, Done) and at the end of the stream, so those keep their place after the text they
    follow. So between two such events a channel's joined text is exactly ``scrubber.scrub`` of
    what the upstream sent; a secret cut by one of them is not recognised (no upstream does that).
    A delta on another channel does not release a tail, which may move it after a later delta of
    another channel, never after a non-delta event.

    A delta whose text is all held back is not sent; one sent unchanged is the same object. When
    ``events`` fails, the error propagates and held tails are dropped: they were never sent, and a
    failed call promises nothing more. Closing this stream closes ``events`` (its HTTP response).
    """
    held: dict[_Channel, str] = {}
    try:
        async for event in events:
            if not scrubber:
                yield event
                continue
            delta = _channel(event)
            if delta is None:
                for pending, tail in held.items():
                    yield _delta(pending, scrubber.scrub(tail))
                held.clear()
                yield scrubber.event(event)
                continue
            channel, text = delta
            ready, tail = scrubber.release(held.pop(channel, "") + text)
            if tail:
                held[channel] = tail
            if ready == text:
                yield event
            elif ready:
                yield _delta(channel, ready)
        for pending, tail in held.items():
            yield _delta(pending, scrubber.scrub(tail))
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
