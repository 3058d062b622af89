"""The budget stage's cost on a chat call: reserve before dispatch + settle after, p50/p99 in µs.

Each case times ``BudgetStage.unary`` around an upstream that answers at once (a ready ChatResult
with usage), so what is measured is only what the stage adds: finding the price, counting the
prompt (estimated: a remote model), one ``BEGIN IMMEDIATE`` transaction to reserve and one to
settle in SQLite on its own thread (WAL, synchronous=NORMAL, on the temp directory's disk).
Cases:
  - the cost meter alone (no budget configured, a price declared): what every remote call pays for
    ``ratatoskr_cost_usd``, and a local call beside it;
  - a local model (no budget concerns it): the cost every call pays when budgets are configured;
  - memory ledger, global daily limit (the floor without disk or thread hops);
  - SQLite ledger, global daily limit (two buckets touched: none; one: the day);
  - SQLite ledger, day + month globally, a caller's day and a model's month (four buckets);
  - the same through the streaming twin (a 20-event stream, the settle counted from usage);
  - 32 calls at once on the SQLite ledger (per call, as the loop and the ledger thread interleave).

Run: .venv/bin/python bench/budget.py [--rounds 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from stage_timing import percentiles, timed

from ratatoskr_client.types import ChatEvent, ChatOptions, ChatResult, ContentDelta, Done, Message, Usage, UsageEvent
from ratatoskr_server.config import load_settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import Call, ChatInput, Result
from ratatoskr_server.policy.budget.meter import CostMeterStage
from ratatoskr_server.policy.budget.stage import BudgetStage
from ratatoskr_server.policy.templates.render import TemplateRenderer
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.registry import ModelRegistry
from ratatoskr_server.routing.router import Router
from ratatoskr_server.state.budget import BudgetLedger
from ratatoskr_server.state.memory import MemoryBudgetLedger
from ratatoskr_server.state.sqlite import SqliteBudgetLedger
from ratatoskr_server.telemetry.metrics import Metrics

MESSAGES = [
    Message("system", "You are a careful assistant. Answer briefly and cite nothing."),
    *(Message("user", f"Question {i}: what is {i} times {i + 1}, and why does it matter?") for i in range(5)),
]
ANSWER = ChatResult(message=Message("assistant", "It is 42."), finish_reason="stop", usage=Usage(120, 8, 128))


async def answer(call: Call, ctx: RequestContext) -> Result:
    return ANSWER


async def dispatched(call: Call, ctx: RequestContext) -> Result:
    """The answer with its tokens noted, as dispatch notes them for the edge and the meter."""
    ctx.answered.input_tokens, ctx.answered.output_tokens = ANSWER.usage.prompt_tokens, ANSWER.usage.completion_tokens
    return ANSWER


async def events(call: Call, ctx: RequestContext) -> AsyncIterator[ChatEvent]:
    for i in range(18):
        yield ContentDelta(f"w{i} ")
    yield UsageEvent(Usage(120, 18, 138))
    yield Done("stop")


async def concurrent(name: str, rounds: int, width: int, step: Callable[[], Awaitable[object]]) -> None:
    samples: list[float] = []

    async def one() -> None:
        started = time.perf_counter()
        await step()
        samples.append((time.perf_counter() - started) * 1e6)

    for _ in range(max(rounds // width, 1)):
        await asyncio.gather(*(one() for _ in range(width)))
    p50, p99 = percentiles(samples)
    print(f"{name:<62} p50 {p50:8.1f} µs   p99 {p99:8.1f} µs")


async def drain(stream: AsyncIterator[ChatEvent]) -> None:
    async for _ in stream:
        pass


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ratatoskr-bench-budget-"))
    base: dict[str, Any] = {
        "providers": {
            "up": {"kind": "openai_compat", "base_url": "http://127.0.0.1:9/v1"},
            "lan": {"kind": "openai_compat", "base_url": "http://127.0.0.1:9/v1", "local": True},
        },
    }
    simple = load_settings(**base, budget={"daily_usd": "1000000"})
    wide = load_settings(
        **base,
        budget={
            "daily_usd": "1000000",
            "monthly_usd": "1000000",
            "callers": {"*": {"daily_usd": "1000000"}},
            "models": {"up/*": {"monthly_usd": "1000000"}},
        },
    )
    router = Router(simple)
    registry = ModelRegistry.embedded()
    renderer = TemplateRenderer(simple.templates)

    def stage(settings: Any, ledger: BudgetLedger) -> BudgetStage:
        return BudgetStage(settings.budget, 512, registry, renderer, ledger)

    def call(model: str) -> Call:
        candidates = router.plan(model, Capability.CHAT)
        return Call(
            Capability.CHAT,
            model,
            ChatInput(MESSAGES),
            ChatOptions(model=model, max_tokens=256),
            candidates,
            candidates[0],
        )

    paid, local = call("up/gpt-4o-mini"), call("lan/llama")
    memory = MemoryBudgetLedger()
    sqlite = SqliteBudgetLedger(tmp / "budget.sqlite3")
    s_mem, s_sql, s_wide = stage(simple, memory), stage(simple, sqlite), stage(wide, sqlite)

    def ctx() -> RequestContext:
        return RequestContext.start(caller="bench")

    await timed("baseline: one run_in_executor round trip", args.rounds, lambda: asyncio.to_thread(int))
    priced = load_settings(**base, budget={"prices": {"up/*": {"input_per_million": "1", "output_per_million": "2"}}})
    meter = CostMeterStage(priced.budget.prices, registry, Metrics())
    await timed("cost meter, no budget: a priced call", args.rounds, lambda: meter.unary(paid, ctx(), dispatched))
    await timed("cost meter, no budget: a local call", args.rounds, lambda: meter.unary(local, ctx(), dispatched))
    await timed("local model (no budget concerns it)", args.rounds, lambda: s_sql.unary(local, ctx(), answer))
    await timed("memory ledger, global day", args.rounds, lambda: s_mem.unary(paid, ctx(), answer))
    await timed("SQLite ledger, global day (reserve + settle)", args.rounds, lambda: s_sql.unary(paid, ctx(), answer))
    await timed(
        "SQLite ledger, 4 buckets (day, month, caller, model)", args.rounds, lambda: s_wide.unary(paid, ctx(), answer)
    )
    await timed(
        "SQLite ledger, 4 buckets, stream of 20 events", args.rounds, lambda: drain(s_wide.stream(paid, ctx(), events))
    )
    await concurrent(
        "SQLite ledger, 4 buckets, 32 calls at once (per call)",
        args.rounds,
        32,
        lambda: s_wide.unary(paid, ctx(), answer),
    )
    await sqlite.close()
    await router.aclose()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())  # as the daemon runs
