"""What tracing adds to a call: off, on with sampling 0, on at 100 %; p50/p99 in µs.

Two measures, each for the three settings:
  - the edge and the gateway's own stage chain around a terminal that answers at once (no network),
    so the difference is the tracing code's own cost: request span, a span per stage, dispatch;
  - a whole chat call through the in-process gateway to a loopback OpenAI-style upstream, spans
    exported by the SDK's OTLP/HTTP exporter (batch processor) to a loopback sink, as deployed.
"Off" builds nothing (no provider, no wrappers): it is the baseline the others are compared with.
Timings on a shared machine are noisy; compare the columns of one run, not runs.

Run: .venv/bin/python bench/tracing.py [--rounds 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from stage_timing import Instant, timed

from ratatoskr_client.types import ChatOptions, Message
from ratatoskr_server.config import Settings, load_settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.edge import Edge
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.gateway import Gateway
from ratatoskr_server.net.traced import TracedTransport
from ratatoskr_server.pipeline.call import Call, ChatInput
from ratatoskr_server.pipeline.chain import Chain
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.telemetry.tracing import Tracing

HI = [Message("user", "hi")]
COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
MODES: dict[str, dict[str, Any]] = {
    "off": {"enabled": False},
    "on, sampling 0": {"enabled": True, "sample_ratio": 0.0},
    "on, 100 %": {"enabled": True, "sample_ratio": 1.0},
}


@contextmanager
def loopback() -> Iterator[str]:
    """An OpenAI-style chat endpoint and an OTLP/HTTP sink on 127.0.0.1, on a thread of their own."""
    loop = asyncio.new_event_loop()
    holder: dict[str, Any] = {}

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(COMPLETION)

    async def traces(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def start() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_post("/v1/traces", traces)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["runner"] = runner
        holder["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield f"http://127.0.0.1:{holder['port']}"
    finally:
        asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def settings(base: str, tracing: dict[str, Any], tmp: Path) -> Settings:
    return load_settings(
        local={"model_dir": tmp, "auto_import_default": False, "preload": []},
        metrics={"enabled": False},
        providers={"up": {"kind": "openai_compat", "base_url": f"{base}/v1", "models": ["m"]}},
        tracing={**tracing, "endpoint": f"{base}/v1/traces", "schedule_delay_ms": 200},
    )


async def chain_only(name: str, s: Settings, rounds: int) -> float:
    tracing = Tracing.from_settings(s.tracing)
    gateway = Gateway.from_settings(s, tracing=tracing)
    chain = Chain(gateway._routing.chain.stages, Instant(), tracing)
    edge = Edge(gateway.metrics, 1000, tracing)
    call = Call(Capability.CHAT, "up/m", ChatInput(HI), ChatOptions(model="up/m"))

    async def step() -> None:
        ctx = RequestContext.start()
        async with edge.admit("Chat", ctx, model="up/m"):
            await chain.run(call, ctx)

    try:
        return await timed(f"edge + stages, instant answer, tracing {name}", rounds, step)
    finally:
        await gateway.close()


async def whole_call(name: str, s: Settings, rounds: int) -> float:
    gw = EmbeddedGateway(s)
    options = ChatOptions(model="up/m")
    try:
        return await timed(f"chat to a loopback upstream, tracing {name}", rounds, lambda: gw.chat(HI, options))
    finally:
        await gw.close()


class _InstantUpstream(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"{}")


async def upstream_transport(name: str, s: Settings, rounds: int) -> float:
    """One upstream HTTP call's tracing alone: the transport that makes its span and passes the
    trace on, over a transport that answers at once (no wrapper at all with tracing off)."""
    tracing = Tracing.from_settings(s.tracing)
    inner = _InstantUpstream()
    transport: httpx.AsyncBaseTransport = TracedTransport(inner, tracing) if s.tracing.enabled else inner
    ctx = RequestContext.start()
    span = tracing.start_request("Chat", ctx, "up/m") if s.tracing.enabled else None

    async def step() -> None:
        request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions", content=b"{}")
        response = await transport.handle_async_request(request)
        await response.aread()

    try:
        with tracing.attached(span):
            return await timed(f"one upstream HTTP call's transport, tracing {name}", rounds, step)
    finally:
        tracing.shutdown()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000)
    args = parser.parse_args()
    with loopback() as base, tempfile.TemporaryDirectory() as tmp:
        for measure in (chain_only, upstream_transport, whole_call):
            baseline: float | None = None
            for name, mode in MODES.items():
                p50 = await measure(name, settings(base, mode, Path(tmp)), args.rounds)
                if baseline is None:
                    baseline = p50
                else:
                    print(f"{'':<62} added p50 {p50 - baseline:+9.1f} µs")
            print()


if __name__ == "__main__":
    asyncio.run(main())
