"""What the resilience stages add to a call when nothing fails, p50/p99 in µs.

The fallback, retry and breaker stages (as ``gateway._build`` places them) around a terminal that
answers at once, against the same terminal alone, so the difference is the stages' own cost:
  - unary, a plain model (one candidate: fallback passes it through; retry and breaker run);
  - unary, a route of two candidates (fallback walks: breaker look-ups, a per-attempt call copy);
  - a stream of 20 content events through a two-candidate route (held until the first content).
Target: under 100 µs (0.1 ms) added per call.

Run: .venv/bin/python bench/resilience.py [--rounds 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from stage_timing import Instant

from ratatoskr_client.types import ChatEvent, ChatOptions, Message
from ratatoskr_server.config import load_settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import Call, ChatInput
from ratatoskr_server.pipeline.chain import Chain, Stage
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.routing.breaker import Breakers, BreakerStage
from ratatoskr_server.routing.fallback import FallbackStage
from ratatoskr_server.routing.retry import RetryStage
from ratatoskr_server.routing.router import Router
from ratatoskr_server.state.breakers import MemoryBreakers
from ratatoskr_server.telemetry.metrics import Metrics


async def timed(rounds: int, step: Callable[[], Awaitable[object]]) -> list[float]:
    for _ in range(200):
        await step()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        await step()
        samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    return samples


def p99(samples: list[float]) -> float:
    return samples[max(int(len(samples) * 0.99) - 1, 0)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20000)
    args = parser.parse_args()
    settings = load_settings(
        providers={
            "a": {"kind": "openai_compat", "base_url": "http://127.0.0.1:9/v1"},
            "b": {"kind": "openai_compat", "base_url": "http://127.0.0.1:9/v1"},
        },
        routes={"chain": {"candidates": ["a/m", "b/m"]}},
    )
    router = Router(settings)
    metrics = Metrics()
    breakers = Breakers(settings.resilience.breaker, MemoryBreakers(), metrics=metrics)
    stages: list[Stage] = [
        FallbackStage(breakers, metrics),
        RetryStage(settings.resilience, metrics=metrics),
        BreakerStage(breakers),
    ]
    bare, resilient = Chain([], Instant()), Chain(stages, Instant())
    ctx = RequestContext.start(timeout=60.0)

    def call(model: str) -> Call:
        candidates = router.plan(model, Capability.CHAT)
        return Call(Capability.CHAT, model, ChatInput([Message("user", "hi")]), ChatOptions(model=model),
                    candidates, candidates[0])  # fmt: skip

    async def drain(events: AsyncIterator[ChatEvent]) -> None:
        async for _ in events:
            pass

    plain, route = call("a/m"), call("chain")
    cases: list[tuple[str, Callable[[Chain], Callable[[], Awaitable[object]]]]] = [
        ("unary, one candidate", lambda chain: lambda: chain.run(plain, ctx)),
        ("unary, a route of two", lambda chain: lambda: chain.run(route, ctx)),
        ("stream of 20 events, a route of two", lambda chain: lambda: drain(chain.stream(route, ctx))),
    ]
    print(f"{'case':<40} {'bare p50':>9} {'with p50':>9} {'added p50':>10} {'added p99':>10}   (µs)")
    for name, make in cases:
        without = await timed(args.rounds, make(bare))
        with_ = await timed(args.rounds, make(resilient))
        added50 = statistics.median(with_) - statistics.median(without)
        added99 = p99(with_) - p99(without)
        bare50, with50 = statistics.median(without), statistics.median(with_)
        print(f"{name:<40} {bare50:9.2f} {with50:9.2f} {added50:10.2f} {added99:10.2f}")
    await router.aclose()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
