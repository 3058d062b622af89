"""Stages and the chain that composes them.

A stage sees a call on its way down and its result (or event stream) on the way back:
``unary(call, ctx, next)`` and its streaming twin ``stream(call, ctx, next)``.  It may change the
call, wrap or replace the result, or refuse with a domain error; it never reaches around the chain.
``Stage`` passes both through, so a stage overrides only what it concerns.

Work that must happen however the call ends (a budget's settle, a breaker's verdict) goes in a
``finally`` around ``await next(...)`` in ``unary``, and in a ``finally`` of the async generator in
``stream``.  Every stream is closed by whoever opened it, so that ``finally`` runs on success, on
failure and when the consumer goes away (cancel): a stage whose ``stream`` is an async generator
closes the stream it got from ``next`` (``aclosing``, or ``aclose`` in a ``finally``), and the chain
closes what a stage's plain ``stream`` returned.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from functools import partial
from typing import Protocol

from ratatoskr_client.types import ChatEvent
from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import Call, Result
from ratatoskr_server.telemetry.tracing import Tracing

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
    """The stages around the terminal; with ``tracing`` on, each stage and the dispatch in a span of
    its own (wrappers built here, once: with tracing off a call pays nothing for them)."""

    def __init__(self, stages: Sequence[Stage], terminal: Terminal, tracing: Tracing | None = None) -> None:
        self.stages = tuple(stages)
        self._unary: Next = terminal.unary
        self._stream: NextStream = terminal.stream
        traced = tracing is not None and tracing.enabled
        if traced:
            assert tracing is not None
            self._unary = _traced_unary(tracing, "dispatch", self._unary)
            self._stream = _traced_stream(tracing, "dispatch", self._stream)
        for stage in reversed(self.stages):
            self._unary = _bind_unary(stage, self._unary)
            self._stream = _bind_stream(stage, self._stream)
            if traced:
                assert tracing is not None
                name = f"stage {type(stage).__name__}"
                self._unary = _traced_unary(tracing, name, self._unary)
                self._stream = _traced_stream(tracing, name, self._stream)

    async def run(self, call: Call, ctx: RequestContext) -> Result:
        return await self._unary(call, ctx)

    def stream(self, call: Call, ctx: RequestContext) -> AsyncIterator[ChatEvent]:
        return self._stream(call, ctx)


def _bind_unary(stage: Stage, nxt: Next) -> Next:
    # A stage that changes nothing is left out, and the others are bound without a frame of their
    # own: each layer here is paid on every call, a dozen times over.
    if type(stage).unary is Stage.unary:
        return nxt
    return partial(stage.unary, next=nxt)


def _bind_stream(stage: Stage, nxt: NextStream) -> NextStream:
    method = type(stage).stream
    if method is Stage.stream:
        return nxt
    if inspect.isasyncgenfunction(method):
        # Its body runs at the first read already, and it closes the stream it opened (the stage
        # contract, above): bound as it is, without a generator of the chain's around each event.
        return partial(stage.stream, next=nxt)

    # A stage that returns a stream (often ``next``'s own) decides when it is called: the chain
    # defers that to the first read, so what it raises reaches whoever reads (a fallback or retry
    # around it), and closes what it returned.
    async def step(call: Call, ctx: RequestContext) -> AsyncIterator[ChatEvent]:
        events = stage.stream(call, ctx, nxt)
        async with aclosing(events):  # type: ignore[type-var]
            async for event in events:
                yield event

    return step


def _traced_unary(tracing: Tracing, name: str, nxt: Next) -> Next:
    async def step(call: Call, ctx: RequestContext) -> Result:
        if not tracing.recording(ctx):
            return await nxt(call, ctx)
        with tracing.span(name, {"ratatoskr.model": call.model}):
            return await nxt(call, ctx)

    return step


def _traced_stream(tracing: Tracing, name: str, nxt: NextStream) -> NextStream:
    """The span is current only while the stream below works for an event (see telemetry/tracing)."""

    async def step(call: Call, ctx: RequestContext) -> AsyncIterator[ChatEvent]:
        if not tracing.recording(ctx):
            events = nxt(call, ctx)
            async with aclosing(events):  # type: ignore[type-var]
                async for event in events:
                    yield event
            return
        span = tracing.start_child(name, {"ratatoskr.model": call.model})
        failure = ""
        try:
            with tracing.attached(span):
                events = nxt(call, ctx)
            async with aclosing(events):  # type: ignore[type-var]
                iterator = aiter(events)
                while True:
                    with tracing.attached(span):
                        try:
                            event = await anext(iterator)
                        except StopAsyncIteration:
                            return
                    yield event
        except GeneratorExit:
            raise  # the consumer went away: not this stage's failure
        except BaseException as err:
            failure = type(err).__name__
            raise
        finally:
            tracing.end(span, failure)

    return step
