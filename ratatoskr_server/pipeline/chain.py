"""Stages and the chain that composes them.

A stage sees a call on its way down and its result (or event stream) on the way back:
``unary(call, ctx, next)`` and its streaming twin ``stream(call, ctx, next)``.  It may change the
call, wrap or replace the result, or refuse with a domain error; it never reaches around the chain.
``Stage`` passes both through, so a stage overrides only what it concerns.

Work that must happen however the call ends (a budget's settle, a breaker's verdict) goes in a
``finally`` around ``await next(...)`` in ``unary``, and in a ``finally`` of the async generator in
``stream``: the chain closes every stream it opened (``aclosing``), so that ``finally`` runs on
success, on failure and when the consumer goes away (cancel).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Protocol

from ratatoskr_client.types import ChatEvent
from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import Call, Result

Next = Callable[[Call, RequestContext], Awaitable[Result]]
NextStream = Callable[[Call, RequestContext], AsyncIterator[ChatEvent]]


class Stage:
    """A stage that changes nothing: the base every stage builds on."""

    async def unary(self, call: Call, ctx: RequestContext, next: Next) -> Result:
        return await next(call, ctx)

    def stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        return next(call, ctx)


class Terminal(Protocol):
    """The end of the chain: the call goes to its target."""

    async def unary(self, call: Call, ctx: RequestContext) -> Result: ...

    def stream(self, call: Call, ctx: RequestContext) -> AsyncIterator[ChatEvent]: ...


class Chain:
    def __init__(self, stages: Sequence[Stage], terminal: Terminal) -> None:
        self.stages = tuple(stages)
        self._unary: Next = terminal.unary
        self._stream: NextStream = terminal.stream
        for stage in reversed(self.stages):
            self._unary = _bind_unary(stage, self._unary)
            self._stream = _bind_stream(stage, self._stream)

    async def run(self, call: Call, ctx: RequestContext) -> Result:
        return await self._unary(call, ctx)

    def stream(self, call: Call, ctx: RequestContext) -> AsyncIterator[ChatEvent]:
        return self._stream(call, ctx)


def _bind_unary(stage: Stage, nxt: Next) -> Next:
    async def step(call: Call, ctx: RequestContext) -> Result:
        return await stage.unary(call, ctx, nxt)

    return step


def _bind_stream(stage: Stage, nxt: NextStream) -> NextStream:
    async def step(call: Call, ctx: RequestContext) -> AsyncIterator[ChatEvent]:
        events = stage.stream(call, ctx, nxt)
        async with aclosing(events):  # type: ignore[type-var]
            async for event in events:
                yield event

    return step
