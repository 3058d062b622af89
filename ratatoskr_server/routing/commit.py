"""Holding a stream uncommitted until its first real content, so an early failure stays invisible.

Until the caller has seen something of the answer, a failed stream can be tried again (retry) or
sent elsewhere (fallback) and the caller never knows; once text, reasoning or a tool call has gone
out, it cannot be taken back.  The events before that point (usage, empty deltas) are few and
carry nothing a caller waits for, so they are held, and let through with the first content.
Reasoning commits too: a thinking model may reason for minutes, and holding that back would
freeze the stream for as long.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ratatoskr_client.types import ChatEvent, ContentDelta, ReasoningDelta, ToolCallStart


def commits(event: ChatEvent) -> bool:
    """Whether ``event`` shows the caller part of the answer."""
    if isinstance(event, ContentDelta | ReasoningDelta):
        return bool(event.text)
    return isinstance(event, ToolCallStart)


async def opening(events: AsyncIterator[ChatEvent]) -> list[ChatEvent]:
    """``events`` up to and including the first that commits (or all of them, if it ends first).

    A failure before that point raises here, to the stage that can still try again; the caller
    goes on reading ``events`` after the opening it was handed.
    """
    held: list[ChatEvent] = []
    iterator = aiter(events)
    while True:
        try:
            event = await anext(iterator)
        except StopAsyncIteration:
            return held
        held.append(event)
        if commits(event):
            return held
