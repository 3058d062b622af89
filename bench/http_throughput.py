"""Proxied throughput with 32 concurrent clients: the same chat request straight to an upstream,
through the daemon's OpenAI-compatible HTTP front, and through LiteLLM's proxy, in one run (plus
the daemon's gRPC socket, to tell what the HTTP front costs from what the gateway behind it costs).

The upstream is bench/chat_overhead.py's (an aiohttp OpenAI double in its own process that answers
at once), so every figure is what the server in the middle costs.  The daemon and LiteLLM's proxy
each run as one process (LiteLLM with one worker), in front of the same upstream.  The load is
``--clients`` asyncio workers in this process, each sending its next request as soon as the last
answered, over one keep-alive aiohttp connection pool; every target gets ``--rounds`` windows of
``--seconds``, interleaved in a rotating order so drift on a shared machine falls on all alike.

LiteLLM's proxy is a peer, never a project dependency: it is looked for in its own virtual
environment under bench/.peers/litellm (``make bench-peers`` installs it, pinned, with the proxy's
server packages), and left out, saying so, when that is missing.

Run: .venv/bin/python bench/http_throughput.py [--clients 32 --seconds 3 --rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from chat_overhead import cpu_seconds
from http_front import MESSAGES, free_port, start_daemon, stop

from ratatoskr_client import AsyncServiceClient
from ratatoskr_client.types import ChatOptions, Message

HERE = Path(__file__).resolve().parent
LITELLM = HERE / ".peers" / "litellm" / "bin" / "litellm"
#: LiteLLM's proxy refuses to start without a strong master key; every target is sent it (the daemon,
#: with no caller keys configured, and the upstream ignore it), so all pay the same header.
MASTER_KEY = f"sk-bench-{secrets.token_hex(24)}"


def start_litellm(upstream_url: str, port: int, workdir: Path) -> subprocess.Popen[bytes] | None:
    """LiteLLM's proxy routing model "bench" to the upstream, or None when it is not installed."""
    if not LITELLM.exists():
        return None
    config = workdir / "litellm.yaml"
    config.write_text(
        json.dumps(  # YAML is a superset of JSON
            {
                "model_list": [
                    {
                        "model_name": "bench",
                        "litellm_params": {
                            "model": "openai/bench",
                            "api_base": f"{upstream_url}/v1",
                            "api_key": "unused",
                        },
                    }
                ],
                "litellm_settings": {"telemetry": False, "num_retries": 0},
            }
        )
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LITELLM", "OPENAI"))},
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # its price list from the wheel, never the network
        "LITELLM_LOG": "ERROR",
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "NO_PROXY": "*",
    }
    args = [str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    log = (workdir / "litellm.log").open("wb")
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)


async def wait_ready(session: aiohttp.ClientSession, url: str, model: str, proc: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + 180
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {proc.returncode}")
        try:
            body = {"model": model, "messages": MESSAGES}
            headers = {"authorization": f"Bearer {MASTER_KEY}"}
            async with session.post(url, json=body, headers=headers) as response:
                if response.status == 200:
                    return
                last = f"{response.status} {(await response.text())[:200]}"
        except aiohttp.ClientError as err:
            last = str(err)
        await asyncio.sleep(0.25)
    raise SystemExit(f"{url} did not answer within 180 s: {last}")


Call = Callable[[], Awaitable[None]]


def http_call(session: aiohttp.ClientSession, url: str, model: str) -> Call:
    body = json.dumps({"model": model, "messages": MESSAGES}).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {MASTER_KEY}"}

    async def call() -> None:
        async with session.post(url, data=body, headers=headers) as response:
            payload = await response.read()
            if response.status != 200:
                raise SystemExit(f"{url}: {response.status} {payload[:200]!r}")

    return call


def grpc_call(client: AsyncServiceClient) -> Call:
    messages = [Message(m["role"], m["content"]) for m in MESSAGES]
    options = ChatOptions(model="up/bench")

    async def call() -> None:
        await client.chat(messages, options)

    return call


async def window(call: Call, clients: int, seconds: float) -> list[float]:
    """The latencies of the calls ``clients`` closed-loop workers finished in ``seconds``."""
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def worker() -> None:
        while (start := time.perf_counter()) < end:
            await call()
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies


async def measure(
    targets: dict[str, Call], servers: dict[str, tuple[int, ...]], args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Calls/s and latency per target, and the CPU its server processes (``servers``: pids) spent per
    call, summed; the upstream's own CPU is left out of every figure but the direct one."""
    for call in targets.values():  # warm: connections, lazy imports, first-call paths
        await window(call, args.clients, 1.0)
    elapsed: dict[str, float] = dict.fromkeys(targets, 0.0)
    cpu: dict[str, float] = dict.fromkeys(targets, 0.0)
    latencies: dict[str, list[float]] = {name: [] for name in targets}
    names = list(targets)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start, cpu_before = time.perf_counter(), sum(map(cpu_seconds, servers[name]))
            latencies[name] += await window(targets[name], args.clients, args.seconds)
            elapsed[name] += time.perf_counter() - start
            cpu[name] += sum(map(cpu_seconds, servers[name])) - cpu_before
    out = {}
    for name in targets:
        ordered = sorted(latencies[name])
        out[name] = {
            "calls_per_s": round(len(ordered) / elapsed[name], 1),
            "p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 2),
            "server_cpu_ms_per_call": round(cpu[name] / max(len(ordered), 1) * 1000, 3),
        }
    return out


def print_figures(figures: dict[str, dict[str, float]], ratios: dict[str, float], server: str) -> None:
    """One line per target (``server`` names whose CPU it is), then the ratios."""
    width = max(map(len, figures))
    for name, f in figures.items():
        rate, p50, p99, cpu = f["calls_per_s"], f["p50_ms"], f["p99_ms"], f["server_cpu_ms_per_call"]
        print(
            f"  {name:{width}s} {rate:9.1f} calls/s   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   "
            f"{server} CPU {cpu:6.3f} ms/call"
        )
    width = max(map(len, ratios), default=0)
    for name, ratio in ratios.items():
        print(f"  {name:{width}s} {ratio:6.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    procs: list[subprocess.Popen[Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="rt-tput-", dir="/tmp"))
    try:
        upstream = subprocess.Popen(
            [sys.executable, str(HERE / "chat_overhead.py"), "--serve-upstream"], stdout=subprocess.PIPE, text=True
        )
        procs.append(upstream)
        assert upstream.stdout is not None
        upstream_url = f"http://127.0.0.1:{upstream.stdout.readline().strip()}"
        front_port = free_port()
        procs.append(start_daemon(workdir / "r.sock", upstream_url, front_port))
        urls = {
            "direct": (f"{upstream_url}/v1/chat/completions", "bench", upstream),
            "ratatoskr front": (f"http://127.0.0.1:{front_port}/v1/chat/completions", "up/bench", procs[-1]),
        }
        litellm_port = free_port()
        litellm = start_litellm(upstream_url, litellm_port, workdir)
        if litellm is not None:
            procs.append(litellm)
            urls["litellm proxy"] = (f"http://127.0.0.1:{litellm_port}/v1/chat/completions", "bench", litellm)

        async def run() -> dict[str, dict[str, float]]:
            connector = aiohttp.TCPConnector(limit=args.clients, limit_per_host=args.clients)
            timeout = aiohttp.ClientTimeout(total=60)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                for url, model, proc in urls.values():
                    await wait_ready(session, url, model, proc)
                targets = {name: http_call(session, url, model) for name, (url, model, _) in urls.items()}
                servers = {name: (proc.pid,) for name, (_, _, proc) in urls.items()}
                async with AsyncServiceClient(workdir / "r.sock", timeout=60) as client:
                    targets["ratatoskr grpc"] = grpc_call(client)
                    servers["ratatoskr grpc"] = servers["ratatoskr front"]
                    return await measure(targets, servers, args)

        figures = asyncio.run(run())
        direct = figures["direct"]["calls_per_s"]
        ratios = {
            f"{name} / direct": round(f["calls_per_s"] / direct, 3) for name, f in figures.items() if name != "direct"
        }
        if "litellm proxy" in figures:
            for ours in ("ratatoskr front", "ratatoskr grpc"):
                ratios[f"{ours} / litellm proxy"] = round(
                    figures[ours]["calls_per_s"] / figures["litellm proxy"]["calls_per_s"], 2
                )
        if args.json:
            print(json.dumps({"figures": figures, "ratios": ratios}, indent=2))
        else:
            print(
                f"{args.clients} concurrent clients (HTTP: one aiohttp pool; gRPC: one channel), "
                f"{args.rounds} rounds x {args.seconds:g} s per target, "
                f"closed loop, one chat per call (cpus: {os.cpu_count()})"
            )
            print_figures(figures, ratios, "server")
            if litellm is None:
                print(f"  litellm proxy: not run ({LITELLM} is missing)")
    finally:
        for proc in reversed(procs):
            stop(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
