"""What spillover and the bulkheads add to a call when nothing spills and no bulkhead is full, in µs.

The spillover stage (queue depth read, route thresholds) and the bulkhead stage (count in, count
out) as ``gateway._build`` places them, around a terminal that answers at once, against the same
terminal alone, so the difference is their own cost:
  - unary, a route whose first candidate is the in-process ONNX pool (depth read from the pool);
  - unary, a route whose first candidate is a local server (depth read from its bulkhead);
  - unary, a plain model (no route: spillover looks once and passes; the bulkhead counts);
  - a stream of 20 content events through the local-server route.
Target: under 100 µs (0.1 ms) added per call.

Run: .venv/bin/python bench/spillover.py [--rounds 20000]
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor

from stage_timing import Instant, timed

from ratatoskr_client.types import ChatOptions, Message
from ratatoskr_server.config import load_settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.local.pool import LocalModelPool
from ratatoskr_server.pipeline.call import Call, ChatInput, EmbedInput
from ratatoskr_server.pipeline.chain import Chain
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.providers.local import LocalProvider
from ratatoskr_server.routing.breaker import Breakers
from ratatoskr_server.routing.bulkhead import Bulkheads, BulkheadStage
from ratatoskr_server.routing.router import Router
from ratatoskr_server.routing.spillover import QueueDepth, SpilloverStage
from ratatoskr_server.state.breakers import MemoryBreakers
from ratatoskr_server.telemetry.metrics import Metrics


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20000)
    args = parser.parse_args()
    settings = load_settings(
        local={"preload": [], "auto_import_default": False},
        providers={
            "srv": {"kind": "openai_compat", "base_url": "http://127.0.0.1:9/v1", "local": True},
            "b": {"kind": "openai_compat", "base_url": "http://127.0.0.1:9/v1"},
        },
        routes={
            "server-first": {"candidates": ["srv/m", "b/m"]},
            "pool-first": {"candidates": ["all-minilm-l6-v2", "b/m"]},
        },
    )
    executor = ThreadPoolExecutor(1)
    pool = LocalModelPool(settings, executor)
    router = Router(settings, LocalProvider(pool))
    metrics = Metrics()
    bulkheads = Bulkheads(settings)
    breakers = Breakers(settings.resilience.breaker, MemoryBreakers(), metrics=metrics)
    stages = [
        SpilloverStage(settings.routes, QueueDepth(pool, bulkheads), breakers, metrics),
        BulkheadStage(bulkheads, metrics),
    ]
    bare, staged = Chain([], Instant()), Chain(stages, Instant())

    def planned(call: Call) -> Call:
        candidates = router.plan(call.model, call.task)
        return call.but(candidates=candidates, target=candidates[0])

    chat = ChatInput([Message("user", "hi")])
    cases = {
        "unary, route with the ONNX pool first": planned(
            Call(Capability.EMBED, "pool-first", EmbedInput(["hi"]), ChatOptions())
        ),
        "unary, route with a local server first": planned(Call(Capability.CHAT, "server-first", chat, ChatOptions())),
        "unary, a plain model (no route)": planned(Call(Capability.CHAT, "b/m", chat, ChatOptions())),
    }
    rounds = args.rounds
    print(f"{rounds} calls each; nothing spills, no bulkhead is full")
    for name, call in cases.items():
        base = await timed(f"{name}: bare", rounds, lambda call=call: bare.run(call, RequestContext.start()))
        with_ = await timed(
            f"{name}: + spillover, bulkhead", rounds, lambda call=call: staged.run(call, RequestContext.start())
        )
        print(f"{'':<62} added p50 {with_ - base:6.1f} µs")

    stream_call = cases["unary, route with a local server first"]

    async def drain(chain: Chain) -> None:
        async for _ in chain.stream(stream_call, RequestContext.start()):
            pass

    base = await timed("stream of 20 events, local-server route: bare", rounds // 4, lambda: drain(bare))
    with_ = await timed("stream of 20 events: + spillover, bulkhead", rounds // 4, lambda: drain(staged))
    print(f"{'':<62} added p50 {with_ - base:6.1f} µs")
    assert all(h.in_flight == 0 for h in (bulkheads.local, *bulkheads._providers.values()))
    await router.aclose()
    executor.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
