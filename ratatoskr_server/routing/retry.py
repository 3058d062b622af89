"""Retry: the same candidate again after a transient failure, with backoff, within the deadline.

Exponential backoff with full jitter (a wait drawn from ``[0, min(max, base * 2**n))``) spreads
many callers' retries instead of synchronising them; when the upstream says how long to wait
(Retry-After, retry-after-ms) its latest word wins.  Only transient failures are tried again
(``providers.errors.transient``), never a refusal that would fail the same way; an open circuit
breaker is not retried either (its cooldown is far longer than a backoff: the fallback moves on).
No wait runs past the call's deadline: when the wait would reach it, the failure is final now.
The in-process ONNX pool is not retried: its failures (a full queue, a model unloaded under the
call) are this process's own load, which a second try only adds to; a route's fallback still
moves past it.

The stage sits just above the breaker and dispatch, so stages that depend on the target (budget,
context, template) ran once for this candidate and are not repeated.  A stream is retried only
while it is uncommitted (``routing.commit``): after its first content a failure reaches the caller.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing

from ratatoskr_client.errors import RatatoskrError
from ratatoskr_client.types import ChatEvent
from ratatoskr_server.config import ResilienceSettings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import Call, Result
from ratatoskr_server.pipeline.chain import Next, NextStream, Stage
from ratatoskr_server.providers.errors import transient
from ratatoskr_server.providers.local import LocalProvider
from ratatoskr_server.routing.breaker import CircuitOpen
from ratatoskr_server.routing.commit import opening
from ratatoskr_server.telemetry.metrics import Metrics

Sleep = Callable[[float], Awaitable[None]]


def in_process(call: Call) -> bool:
    """Whether the call goes to the in-process pool, which neither retries nor breakers watch."""
    return call.target is not None and isinstance(call.target.provider, LocalProvider)


class RetryStage(Stage):
    def __init__(
        self,
        settings: ResilienceSettings,
        *,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.sleep = sleep
        self.jitter = jitter
        self.metrics = metrics

    def pause(self, err: RatatoskrError, attempt: int, ctx: RequestContext) -> float | None:
        """Seconds to wait before try ``attempt + 1`` after ``err``, or None: ``err`` is final."""
        settings = self.settings
        if attempt >= settings.attempts or not transient(err) or isinstance(err, CircuitOpen):
            return None
        asked = err.retry_after_s
        if asked is not None:
            if asked > settings.max_retry_after_s:
                return None
            wait = asked
        else:
            wait = self.jitter() * min(settings.backoff_max_s, settings.backoff_base_s * 2 ** (attempt - 1))
        left = ctx.remaining()
        if left is not None and wait >= left:
            return None  # it would wake at or past the deadline: no time for another try
        return wait

    async def _wait(self, call: Call, ctx: RequestContext, wait: float) -> None:
        ctx.note_retry()
        if self.metrics is not None and call.target is not None:
            self.metrics.retries.labels(provider=call.target.provider.name).inc()
        await self.sleep(wait)

    async def unary(self, call: Call, ctx: RequestContext, next: Next) -> Result:
        if in_process(call):
            return await next(call, ctx)
        attempt = 1
        while True:
            try:
                return await next(call, ctx)
            except RatatoskrError as err:
                wait = self.pause(err, attempt, ctx)
                if wait is None:
                    raise
            await self._wait(call, ctx, wait)
            attempt += 1

    def stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        if in_process(call):
            return next(call, ctx)
        return self._tries(call, ctx, next)

    async def _tries(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        attempt = 1
        while True:
            events = next(call, ctx)
            async with aclosing(events):  # type: ignore[type-var]
                try:
                    held = await opening(events)
                except RatatoskrError as err:
                    wait = self.pause(err, attempt, ctx)
                    if wait is None:
                        raise
                else:
                    for event in held:
                        yield event
                    async for event in events:
                        yield event
                    return
            await self._wait(call, ctx, wait)
            attempt += 1
