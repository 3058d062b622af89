"""Issue 17's goals in one table: runs the benches that measure them (each with --json, each against
its own baseline measured in the same run) and prints every figure beside its goal.

  chat     bench/chat_overhead.py  added latency / a bare grpc.aio echo, unary and time to first
                                   token, production stages (goal <= 1.5)
  proxy    bench/http_throughput.py 32 concurrent clients: our front / LiteLLM's proxy (goal >= 10,
                                   when the LiteLLM peer is installed) and the daemon's CPU per call
                                   (goal <= 1 ms)
  embed    bench/embed.py          32-text calls / raw ONNX Runtime at its best batch (goal >= 0.95);
                                   64 concurrent 1-text clients / raw (goal >= 0.8) and / Infinity's
                                   ONNX engine (goal >= 1.5, when the Infinity peer is installed)
  start    bench/startup.py        start to SERVING with the default model (goal <= 1 s); idle RSS
                                   without a model (<= 150 MB) and with MiniLM (<= 350 MB)

Every bench also runs alone with its own detailed report (make bench-chat, bench-embed, bench-start).
Run: make bench   (or: .venv/bin/python bench/goals.py [--quick])
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def run(script: str, *args: str) -> dict[str, Any]:
    """One bench's --json figures (its progress and warnings pass through to stderr)."""
    done = subprocess.run([sys.executable, str(HERE / script), *args, "--json"], stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{script} failed with status {done.returncode}")
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds: a rough table in a few minutes")
    args = parser.parse_args()
    quick = args.quick
    chat = run("chat_overhead.py", "--rounds", "4" if quick else "12")
    proxy = run("http_throughput.py", "--rounds", "2" if quick else "3")
    embed = run("embed.py", "--rounds", "2" if quick else "3")
    start = run("startup.py", "--rounds", "3" if quick else "7")

    rows: list[tuple[str, float | None, str, bool | None]] = []

    def row(name: str, value: float | None, goal: str, met: bool | None) -> None:
        rows.append((name, value, goal, met))

    for kind, label in (("unary", "chat added / echo, unary p50"), ("ttft", "chat added / echo, TTFT p50")):
        ratio = chat["added_over_echo_p50"][kind]
        row(label, ratio, "<= 1.5", ratio <= 1.5)
    ratios, figures = proxy["ratios"], proxy["figures"]
    versus = ratios.get("ratatoskr front / litellm proxy")
    row("proxy calls/s, our HTTP front / LiteLLM", versus, ">= 10", None if versus is None else versus >= 10)
    versus = ratios.get("ratatoskr grpc / litellm proxy")
    row("proxy calls/s, our gRPC / LiteLLM", versus, ">= 10", None if versus is None else versus >= 10)
    for target in ("ratatoskr front", "ratatoskr grpc"):
        cpu = figures[target]["server_cpu_ms_per_call"]
        row(f"daemon CPU per call under load, {target.split()[1]} (ms)", cpu, "<= 1", cpu <= 1)
    row("embed 32-text calls / raw ONNX Runtime", embed["b_over_a"], ">= 0.95", embed["b_over_a"] >= 0.95)
    row("embed 64 concurrent 1-text / raw", embed["c_over_a"], ">= 0.8", embed["c_over_a"] >= 0.8)
    versus = embed.get("c_over_d")
    row("embed 64 concurrent 1-text, ours / Infinity", versus, ">= 1.5", None if versus is None else versus >= 1.5)
    serving = start["serving_ms"]["ratatoskr, default model"]
    row("start to SERVING, default model (ms)", serving, "<= 1000", serving <= 1000)
    rss = start["idle_rss_mb"]
    row("idle RSS, no model (MB)", rss["ratatoskr, no model"], "<= 150", rss["ratatoskr, no model"] <= 150)
    row("idle RSS, MiniLM (MB)", rss["ratatoskr, default model"], "<= 350", rss["ratatoskr, default model"] <= 350)

    print(f"issue 17 goals (cpus: {chat['cores']}; chat stages: {chat['daemon']})")
    for name, value, goal, met in rows:
        shown = "not run" if value is None else f"{value:g}"
        verdict = "-" if met is None else ("met" if met else "missed")
        print(f"  {name:<52} {shown:>10}   goal {goal:<8} {verdict}")
    if "litellm proxy" not in figures or versus is None:
        print("  (LiteLLM's proxy and Infinity are peers under bench/.peers: make bench-peers installs them)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
