"""The context stage: a conversation is fitted to its model's window before it is sent, or refused.

Sent as it is, a conversation longer than the window either fails upstream with a message that
differs per server, or is cut silently at the front (llama.cpp keeps the end, some servers the
start), losing the system prompt first.  Here the window is known ahead (``[context.windows]``, the
registry, a GGUF's metadata), the rendered prompt is counted with the model's tokenizer where one is
known (else estimated, and said so), and the request's strategy decides: refuse with the numbers,
drop the oldest turns, or drop turns from the middle.  What is dropped is always whole turns (a
user message with the answers and tool exchanges that follow it), so a tool call never loses its
results and templates that insist on alternating roles still render; system messages always stay.
Everything left out is reported in the notes.
"""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from ratatoskr_client.errors import InvalidArgument, OutOfRange
from ratatoskr_client.types import CONTEXT_STRATEGIES, ChatEvent, Message, Truncation
from ratatoskr_server.config import ContextSettings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import Call, ChatInput, GenerateInput, Result
from ratatoskr_server.pipeline.chain import Next, NextStream, Stage
from ratatoskr_server.policy.reserve import output_reserve
from ratatoskr_server.policy.templates.render import PromptCounter, TemplateRenderer, estimate_tokens
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.registry import ModelRegistry

#: Roles that are never dropped.
KEPT_ROLES = frozenset({"system", "developer"})
#: Distinct (model, target) pairs whose window is remembered; more are forgotten all at once.
_MAX_REMEMBERED = 1024

Count = Callable[[Sequence[Message]], int]


@dataclass(frozen=True, slots=True)
class Window:
    """What is known of a model's window, resolved once per (model, target)."""

    size: int
    #: The model's longest answer as the registry says; 0: unknown.
    max_output: int
    counter: PromptCounter


@dataclass(frozen=True, slots=True)
class Fitted:
    messages: list[Message]
    dropped: list[int]
    before: int
    after: int


def turns(messages: Sequence[Message]) -> list[list[int]]:
    """Indices of the droppable messages, grouped in turns: each user message with what follows it
    up to the next user message (answers, tool calls and their results).  Kept roles are in none."""
    units: list[list[int]] = []
    for i, m in enumerate(messages):
        if m.role in KEPT_ROLES:
            continue
        if m.role == "user" or not units:
            units.append([i])
        else:
            units[-1].append(i)
    return units


def drop_order(units: list[list[int]], strategy: str) -> list[list[int]]:
    """The turns in the order they go: oldest first, or nearest the middle first; the latest turn
    (and for middle_out the first) never goes."""
    if strategy == "sliding_window":
        return units[:-1]
    middle = units[1:-1]
    centre = (len(middle) - 1) / 2
    nearest = sorted(range(len(middle)), key=lambda i: abs(i - centre))
    return [middle[i] for i in nearest]


def _chars(message: Message) -> int:
    return len(message.content) + sum(len(c.name) + len(c.arguments) for c in message.tool_calls)


def fit(
    messages: Sequence[Message], available: int, strategy: str, count: Count, describe: Callable[[int], str]
) -> Fitted | None:
    """``messages`` cut to ``available`` tokens by ``strategy``; None when they fit as they are.

    Counts are of the whole rendered prompt, never sums of parts (templates add tokens between
    messages).  Fewer turns never count more, so the fewest turns to drop are found by a search
    that starts where the conversation's own tokens-per-character says the answer is and then
    bisects: usually two or three renders after the first, for a conversation of any length.
    ``describe(tokens)`` words the refusal's numbers.
    """
    before = count(messages)
    if before <= available:
        return None
    if strategy == "error":
        raise OutOfRange(f"{describe(before)}; set context_strategy to sliding_window or middle_out to drop turns")
    order = drop_order(turns(messages), strategy)
    n = len(order)
    counted: dict[int, int] = {0: before}

    def without(k: int) -> list[int]:
        return sorted(i for unit in order[:k] for i in unit)

    def kept(dropped: list[int]) -> list[Message]:
        gone = set(dropped)
        return [m for i, m in enumerate(messages) if i not in gone]

    def fits(k: int) -> bool:
        if k not in counted:
            counted[k] = count(kept(without(k)))
        return counted[k] <= available

    # The guess: drop turns until their characters, at this conversation's tokens per character, cover the excess.
    total_chars = sum(_chars(m) for m in messages) or 1
    excess_chars = (before - available) * total_chars / before
    guess, dropped_chars = 0, 0.0
    while guess < n and dropped_chars < excess_chars:
        dropped_chars += sum(_chars(messages[i]) for i in order[guess])
        guess += 1
    low, high = 1, n  # the answer is in [low, high] if anything fits; fits(n) is checked only when it must be
    for k in (guess, guess - 1, guess + 1):
        if low <= k < high:
            if fits(k):
                high = k
            else:
                low = k + 1
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    if n == 0 or not fits(high):
        what = "the latest turn" if strategy == "sliding_window" else "the first and the latest turns"
        raise OutOfRange(f"{describe(counted.get(n, before))} even with only the system prompt and {what} ({strategy})")
    dropped = without(high)
    return Fitted(kept(dropped), dropped, before, counted[high])


class ContextStage(Stage):
    def __init__(self, settings: ContextSettings, registry: ModelRegistry, renderer: TemplateRenderer) -> None:
        self.settings = settings
        self.registry = registry
        self.renderer = renderer
        self._windows: dict[tuple[str, str, bool], Window | None] = {}
        self._live = registry.live

    def strategy(self, call: Call) -> str:
        chosen = (call.options.context_strategy if call.options else "") or self.settings.strategy
        if chosen not in CONTEXT_STRATEGIES:
            raise InvalidArgument(f"context_strategy {chosen!r} is not one of: {', '.join(CONTEXT_STRATEGIES)}")
        return chosen

    async def window(self, call: Call, with_tools: bool) -> Window | None:
        """The target's window, remembered until the registry's live data changes or a reload."""
        assert call.target is not None
        if self.registry.live is not self._live:
            self._windows.clear()
            self._live = self.registry.live
        key = (call.model, call.target.id, with_tools)
        if key in self._windows:
            return self._windows[key]
        names = (call.model, call.target.id, call.target.model)
        record = self.registry.lookup(call.target.provider.name, call.target.model)
        counter = await self.renderer.counter(names, with_tools=with_tools)
        size = next(
            (size for pattern, size in self.settings.windows.items() for n in names if fnmatch.fnmatchcase(n, pattern)),
            0,
        )
        size = size or (record.context_window if record else 0) or counter.context_length
        known = Window(size, record.max_output_tokens if record else 0, counter) if size else None
        if len(self._windows) >= _MAX_REMEMBERED:
            self._windows.clear()
        self._windows[key] = known
        return known

    def reserve(self, call: Call, window: Window) -> int:
        """Tokens kept for the answer: max_tokens, else the model's max output when it leaves room, else the setting."""
        asked = call.options.max_tokens if call.options else None
        if asked is not None:
            if asked >= window.size:
                assert call.target is not None
                raise OutOfRange(
                    f"max_tokens={asked} leaves no room for a prompt in the window of {window.size} tokens of "
                    f"'{call.target.id}'"
                )
            return asked
        return output_reserve(None, window.max_output, self.settings.output_reserve_tokens, window.size)

    async def checked_prompt(self, call: Call, prompt: str) -> None:
        """A raw prompt cannot be cut without changing what it asks: one over the window is refused."""
        window = await self.window(call, False)
        if window is None:
            return
        reserve = self.reserve(call, window)
        tokenizer = window.counter.tokenizer
        if tokenizer is None:
            tokens, kind = estimate_tokens(prompt), "an estimated "
        else:
            encoded = await asyncio.to_thread(tokenizer.encode, prompt, add_special_tokens=False)
            tokens, kind = len(encoded.ids), ""
        if tokens + reserve > window.size:
            assert call.target is not None
            raise OutOfRange(
                f"the prompt is {kind}{tokens} tokens and {reserve} are reserved for the answer, but "
                f"'{call.target.id}' has a window of {window.size} tokens"
            )

    async def fitted(self, call: Call, ctx: RequestContext) -> Call:
        if call.target is None:
            return call
        if isinstance(call.payload, GenerateInput):
            await self.checked_prompt(call, call.payload.prompt)
            return call
        if call.task is not Capability.CHAT or not isinstance(call.payload, ChatInput):
            return call
        strategy = self.strategy(call)
        tools = call.options.tools if call.options else []
        window = await self.window(call, bool(tools))
        if window is None:
            return call
        reserve = self.reserve(call, window)
        available = window.size - reserve
        counter = window.counter
        target = call.target.id

        def count(messages: Sequence[Message]) -> int:
            return counter.count(messages, tools)

        def describe(tokens: int) -> str:
            kind = "an estimated " if not counter.exact else ""
            return (
                f"the conversation is {kind}{tokens} tokens and {reserve} are reserved for the answer, but "
                f"'{target}' has a window of {window.size} tokens"
            )

        messages = call.payload.messages
        if counter.exact:  # renders and tokenizes: off the event loop
            result = await asyncio.to_thread(fit, messages, available, strategy, count, describe)
        else:
            result = fit(messages, available, strategy, count, describe)
        if result is None:
            return call
        ctx.note_truncation(
            Truncation(
                strategy=strategy,
                dropped_messages=result.dropped,
                prompt_tokens_before=result.before,
                prompt_tokens_after=result.after,
                window=window.size,
                reserve=reserve,
                estimated=not counter.exact,
            )
        )
        return call.but(payload=ChatInput(result.messages))

    async def unary(self, call: Call, ctx: RequestContext, next: Next) -> Result:
        return await next(await self.fitted(call, ctx), ctx)

    async def stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        events = next(await self.fitted(call, ctx), ctx)
        async with aclosing(events):  # type: ignore[type-var]
            async for event in events:
                yield event
