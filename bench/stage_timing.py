"""Timing one awaitable step many times, and the instant terminal the in-process stage benches put their
stages in front of (context, privacy, budget, cache, resilience, spillover, failover, tracing).

Imported by those scripts as a sibling module (they run as ``.venv/bin/python bench/NAME.py``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from ratatoskr_client.types import ChatEvent, ChatResult, ContentDelta, Done, Message
from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import Call, Result

#: What the instant terminal answers: a one-line chat, or a stream of 20 content events and Done.
ANSWER = ChatResult(message=Message("assistant", "hi"), finish_reason="stop")
EVENTS: list[ChatEvent] = [ContentDelta(f"{i} ") for i in range(20)] + [Done(finish_reason="stop")]


class Instant:
    """A terminal that answers at once: what remains is the stages' cost."""

    async def unary(self, call: Call, ctx: RequestContext) -> Result:
        return ANSWER

    async def stream(self, call: Call, ctx: RequestContext) -> AsyncIterator[ChatEvent]:
        for event in EVENTS:
            yield event


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) of ``samples``, which are sorted in place."""
    samples.sort()
    return statistics.median(samples), samples[max(int(len(samples) * 0.99) - 1, 0)]


async def timed(name: str, rounds: int, step: Callable[[], Awaitable[object]], warmup: int = 20) -> float:
    """Print the p50 and p99 of ``step`` in µs after ``warmup`` untimed runs; return the p50."""
    for _ in range(warmup):
        await step()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        await step()
        samples.append((time.perf_counter() - started) * 1e6)
    p50, p99 = percentiles(samples)
    print(f"{name:<62} p50 {p50:9.1f} µs   p99 {p99:9.1f} µs")
    return p50
