"""CPU per upstream call of each HTTP engine the providers could sit on, measured side by side.

The same loopback OpenAI-compatible upstream as bench/chat_overhead.py (its own process, an
instant answer) is called from this process, one call at a time, by
  httpcore  the providers' client (``net/http.build_client``: httpx's requests handed straight to
            the transport stack, ``net/client.py``) with ``[http] engine = "httpcore"``;
  aiohttp   the same client with the default ``engine = "aiohttp"`` (aiohttp's pool under
            httpx's models, with the egress guard in aiohttp's connector);
  bare      aiohttp's own ClientSession, no httpx at all: the floor of a Python HTTP client here.
Unary calls read the JSON answer; stream calls read the SSE answer to its end.  The figure is this
process's CPU time per call (user + system), which the upstream's work does not enter, so it
stays readable on a busy machine where wall-clock latency does not.  Engines alternate in
rounds; the medians of the per-round figures are printed with the ratio to httpcore.

Run: .venv/bin/python bench/http_engine.py [--rounds 7 --calls 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

sys.path.insert(0, str(Path(__file__).parent))
import chat_overhead

from ratatoskr_server.config import HttpSettings
from ratatoskr_server.net.http import build_client

ENGINES = ("httpcore", "aiohttp", "bare")
KINDS = ("unary", "stream")


async def measure(engine: str, kind: str, url: str, calls: int) -> float:
    """CPU ms per call for ``calls`` sequential calls after a warm-up."""
    unary, stream, _ = chat_overhead.request_bodies()
    body = unary if kind == "unary" else stream
    session: aiohttp.ClientSession | None = None
    one: Callable[[], Awaitable[Any]]
    if engine == "bare":
        session = aiohttp.ClientSession()

        async def one() -> Any:
            assert session is not None
            async with session.post(f"{url}/v1/chat/completions", json=body) as response:
                return await response.read()

        closer: Callable[[], Awaitable[None]] = session.close
    else:
        client = build_client(HttpSettings(engine=engine), base_url=f"{url}/v1", headers={})  # type: ignore[arg-type]

        async def one() -> Any:
            if kind == "unary":
                return (await client.post("/chat/completions", json=body)).json()
            async with client.stream("POST", "/chat/completions", json=body) as response:
                return [line async for line in response.aiter_lines()]

        closer = client.aclose
    for _ in range(min(200, calls)):
        await one()
    started = time.process_time()
    for _ in range(calls):
        await one()
    spent = time.process_time() - started
    await closer()
    return spent / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    upstream, port = chat_overhead.spawn_helper("--serve-upstream")
    url = f"http://127.0.0.1:{port}"
    figures: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(args.rounds):
            for kind in KINDS:
                for engine in ENGINES:
                    figures.setdefault((engine, kind), []).append(uvloop.run(measure(engine, kind, url, args.calls)))
    finally:
        chat_overhead.stop(upstream)
    print(f"CPU per upstream call, this process: {args.rounds} rounds x {args.calls} calls, medians of rounds")
    for kind in KINDS:
        base = statistics.median(figures[("httpcore", kind)])
        for engine in ENGINES:
            value = statistics.median(figures[(engine, kind)])
            print(f"{kind:<7} {engine:<9} {value:7.3f} ms   x{value / base:5.2f} of httpcore")


if __name__ == "__main__":
    main()
