"""Streaming failover: its cost when nothing fails, and the time to the first continued token after a cut.

1. No failure (in process, no network): a stream of 20 content events through a two-candidate
   route, the resilience stages as ``gateway._build`` places them (fallback, retry, breaker), with
   streaming failover on against off, and against no stages at all.  Target: under 100 µs (0.1 ms)
   added per call.
2. After a cut (real HTTP to the OpenAI and Anthropic doubles of ``tests/upstreams`` on loopback, the
   embedded gateway): the story stream is cut after a fixed number of bytes; measured is the gap the
   caller sees between the last text of the broken leg and the first text of the continuation (the
   cut noticed, the next candidate asked, its first text through the seam), next to the time to
   first token of a fresh stream to the same continuing model.  Prompt-mode continuations restart
   the cut word, so the seam waits until it knows the overlap.

Timings on a shared machine are noisy: read the p50s.
Run: .venv/bin/python bench/failover.py [--rounds 20000] [--cuts 200]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the doubles live in tests/upstreams

from stage_timing import Instant, percentiles, timed

from ratatoskr_client.types import ChatOptions, ContentDelta, Failover, Message
from ratatoskr_server.config import load_settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.gateway import Gateway
from ratatoskr_server.pipeline.call import Call, ChatInput
from ratatoskr_server.pipeline.chain import Chain, Stage
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.routing.breaker import Breakers, BreakerStage
from ratatoskr_server.routing.failover import StreamFailover
from ratatoskr_server.routing.fallback import FallbackStage
from ratatoskr_server.routing.retry import RetryStage
from ratatoskr_server.routing.router import Router
from ratatoskr_server.state.breakers import MemoryBreakers
from ratatoskr_server.telemetry.metrics import Metrics
from tests.upstreams import anthropic_double, openai_double, story
from tests.upstreams.harness import serve

ASK = [Message("user", "Tell me the story of Ratatoskr.")]
AN_KEY = "sk-ant-api03-failover-bench-key"


async def no_failure(rounds: int) -> None:
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

    def stages(failover: StreamFailover | None) -> list[Stage]:
        return [
            FallbackStage(breakers, metrics, failover),
            RetryStage(settings.resilience, metrics=metrics),
            BreakerStage(breakers),
        ]

    candidates = router.plan("chain", Capability.CHAT)
    call = Call(Capability.CHAT, "chain", ChatInput(ASK), ChatOptions(model="chain"), candidates, candidates[0])
    ctx = RequestContext.start(timeout=60.0)

    async def drain(chain: Chain) -> None:
        async for _ in chain.stream(call, ctx):
            pass

    print("-- no failure: a stream of 20 events through a route of two (in process)")
    bare = await timed("no stages", rounds, lambda: drain(Chain([], Instant())), warmup=500)
    off = await timed("fallback, retry, breaker; failover off", rounds, lambda: drain(Chain(stages(None), Instant())))
    on_chain = Chain(stages(StreamFailover(settings.failover)), Instant())
    on = await timed("fallback, retry, breaker; failover on", rounds, lambda: drain(on_chain))
    print(f"failover adds {on - off:.1f} µs p50 per call; the resilience stages with it add {on - bare:.1f} µs")
    await router.aclose()


async def after_cut(cuts: int) -> None:
    with serve(openai_double.routes()) as oa, serve(anthropic_double.routes(api_key=AN_KEY)) as an:
        settings = load_settings(
            local={"preload": [], "auto_import_default": False},
            providers={
                "oa": {"kind": "openai_compat", "base_url": f"{oa.base_url}/v1", "local": True},
                "vllm": {"kind": "openai_compat", "base_url": f"{oa.base_url}/v1", "local": True},
                "an": {"kind": "anthropic", "base_url": f"{an.base_url}/v1", "api_key": AN_KEY, "local": True},
            },
            routes={
                "prompt": {"candidates": ["oa/story", "oa/story-continue"]},
                "prefill": {"candidates": ["oa/story", "vllm/story-continue"]},
                "anthropic": {"candidates": ["oa/story", "an/story-continue"]},
            },
            failover={"continuation": {"vllm": "prefill"}},
            resilience={"attempts": 1, "breaker": {"enabled": False}},
        )
        gw = EmbeddedGateway(settings, gateway=Gateway.from_settings(settings))
        # Halfway through the story, mid-word.
        at = sum(len(raw) for raw, _ in openai_double.story_events("story")[:20]) - 9
        print(f"-- after a cut ({cuts} streams each, real HTTP on loopback, cut after {at} bytes)")
        try:
            for route, fresh in (
                ("prompt", "oa/story-continue"),
                ("prefill", "vllm/story-continue"),
                ("anthropic", "an/story-continue"),
            ):
                gaps, firsts = [], []
                for _ in range(cuts):
                    gaps.append(await _gap(gw, route, at))
                    firsts.append(await _first_token(gw, fresh))
                gap50, gap99 = percentiles(gaps)
                first50, first99 = percentiles(firsts)
                print(
                    f"{route:<10} first continued token after the cut p50 {gap50:8.0f} µs p99 {gap99:8.0f} µs"
                    f"   (a fresh stream's first token p50 {first50:8.0f} µs p99 {first99:8.0f} µs)"
                )
        finally:
            await gw.close()


async def _gap(gw: EmbeddedGateway, route: str, at: int) -> float:
    """Microseconds between the broken leg's last text and the continuation's first."""
    options = ChatOptions(model=route, raw_provider_options={story.CUT_FIELD: at})
    last_before: float | None = None
    gap: float | None = None
    seam = False
    async for event in gw.chat_stream(ASK, options):  # read to the end: the next stream starts clean
        now = time.perf_counter()
        if isinstance(event, Failover):
            seam = True
        elif isinstance(event, ContentDelta) and not seam:
            last_before = now
        elif isinstance(event, ContentDelta) and gap is None and last_before is not None:
            gap = (now - last_before) * 1e6
    if gap is None:
        raise AssertionError("the stream did not fail over")
    return gap


async def _first_token(gw: EmbeddedGateway, model: str) -> float:
    started = time.perf_counter()
    first: float | None = None
    async for event in gw.chat_stream(ASK, ChatOptions(model=model)):
        if isinstance(event, ContentDelta) and first is None:
            first = (time.perf_counter() - started) * 1e6
    if first is None:
        raise AssertionError("no text")
    return first


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument("--cuts", type=int, default=200)
    args = parser.parse_args()
    # The doubles' cut streams are failures the (disabled) breakers still count and log: not news here.
    logging.getLogger("ratatoskr_server.routing.breaker").setLevel(logging.ERROR)
    await no_failure(args.rounds)
    await after_cut(args.cuts)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
