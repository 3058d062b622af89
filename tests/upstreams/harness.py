"""Run an aiohttp application on 127.0.0.1 in a background thread, recording what it was sent.

The doubles speak each provider's exact wire format; the harness only hosts
them, records requests (method, path, headers, JSON body) and notices when a
client goes away in the middle of a streamed answer, so tests can prove that
a cancel closed the upstream connection.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    #: Case-insensitive, as HTTP header names are: clients may send them in any case.
    headers: CIMultiDict[str]
    body: Any


@dataclass
class Upstream:
    base_url: str
    requests: list[Recorded] = field(default_factory=list)
    #: Set when a streaming handler found its client gone before it finished writing.
    disconnected: threading.Event = field(default_factory=threading.Event)
    #: Set by handlers when they start streaming, so a test can cancel mid-stream.
    streaming: threading.Event = field(default_factory=threading.Event)
    state: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[web.Request, Upstream], Awaitable[web.StreamResponse]]


async def write_or_notice(response: web.StreamResponse, data: bytes, upstream: Upstream) -> bool:
    """Write a piece of a streamed answer; False (and ``disconnected`` set) if the client is gone."""
    try:
        await response.write(data)
    except (ConnectionResetError, ConnectionError, RuntimeError):
        upstream.disconnected.set()
        return False
    return True


@contextmanager
def serve(routes: dict[tuple[str, str], Handler]) -> Iterator[Upstream]:
    """Serve ``routes`` ({(method, path): handler}) until the block ends."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        upstream = Upstream(base_url="")
        app = web.Application()

        def wrap(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
            async def recorded(request: web.Request) -> web.StreamResponse:
                raw = await request.read()
                try:
                    body: Any = json.loads(raw) if raw else None
                except (json.JSONDecodeError, UnicodeDecodeError):  # not JSON (OTLP's protobuf, say)
                    body = raw.decode("utf-8", "replace")
                upstream.requests.append(
                    Recorded(request.method, request.path, dict(request.query), CIMultiDict(request.headers), body)
                )
                try:
                    return await handler(request, upstream)
                except (ConnectionResetError, asyncio.CancelledError):
                    upstream.disconnected.set()
                    raise

            return recorded

        for (method, path), handler in routes.items():
            app.router.add_route(method, path, wrap(handler))
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        upstream.base_url = f"http://127.0.0.1:{port}"
        holder.update(upstream=upstream, runner=runner)
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    started.wait(10)
    try:
        yield holder["upstream"]
    finally:
        asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def sse(data: Any, event: str | None = None) -> bytes:
    """One Server-Sent Event: optional ``event:`` line, a ``data:`` line, a blank line."""
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


async def start_stream(request: web.Request, content_type: str) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
    await response.prepare(request)
    return response
