"""The providers' HTTP pool survives cancelled callers (httpcore #1093).

httpcore 1.0.9 (the locked version) hands a queued request a *new* connection when a slot frees
because a connection closed (the upstream said ``Connection: close``, or the keep-alive limit
evicted an idle one). A caller cancelled before it resumes leaves that connection in the pool
forever, CONNECTING and owned by nobody: each such cancel loses a slot for the life of the
process, and once ``max_connections`` are lost every call fails with ``PoolTimeout`` against a
healthy upstream. The gateway cancels upstream calls all the time (a client hangs up, a deadline
passes), so the pool the providers share must not let httpcore see a waiter at all.

Every step is ordered by events, not clocks: a counting transport tells the test when a caller has been
handed to the transport (it then runs until it blocks waiting for a slot), and holding a streamed
response open is what keeps a connection busy. The pool timeout only bounds a failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Literal

import httpx
import pytest
from aiohttp import web

from ratatoskr_server.config import HttpSettings
from ratatoskr_server.net.client import UpstreamClient
from ratatoskr_server.net.http import build_client
from ratatoskr_server.net.wrapping import WrappingTransport
from tests.upstreams.harness import Upstream, serve, start_stream

#: Long enough that a slot that is really free is never mistaken for a lost one on a busy machine.
POOL_TIMEOUT_S = 5.0


async def _answer(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    return web.Response(text="ok")


async def _answer_and_close(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    response = web.Response(text="ok", headers={"Connection": "close"})
    response.force_close()
    return response


async def _hang_up(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.close()
    return web.Response()  # never sent: the connection is already gone


async def _trickle(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    """A body that never ends: one chunk, then silence until the client goes away (bounded)."""
    response = await start_stream(request, "text/plain")
    await response.write(b"first")
    for _ in range(600):
        if request.transport is None or request.transport.is_closing():
            break
        await asyncio.sleep(0.05)
    return response


async def _cut(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    """Half a body, then the connection drops."""
    response = web.StreamResponse(status=200, headers={"Content-Length": "10"})
    await response.prepare(request)
    await response.write(b"half-")
    assert request.transport is not None
    request.transport.close()
    return response


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    routes = {
        ("GET", "/keep"): _answer,
        ("GET", "/close"): _answer_and_close,
        ("GET", "/drop"): _hang_up,
        ("GET", "/trickle"): _trickle,
        ("GET", "/cut"): _cut,
    }
    with serve(routes) as up:
        yield up


Engine = Literal["aiohttp", "httpcore"]


@pytest.fixture(params=["aiohttp", "httpcore"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Both engines the providers' client can run on keep every slot (``[http] engine``)."""
    chosen: Engine = request.param
    return chosen


def _client(
    upstream: Upstream, engine: Engine, *, max_connections: int, max_keepalive: int | None = None
) -> UpstreamClient:
    settings = HttpSettings(
        engine=engine,
        max_connections=max_connections,
        max_keepalive_connections=max_connections if max_keepalive is None else max_keepalive,
        pool_timeout_s=POOL_TIMEOUT_S,
        http2=False,  # plain-text loopback: HTTP/1.1 either way
    )
    return build_client(settings, base_url=upstream.base_url, headers={})


async def _hold(client: UpstreamClient, path: str, count: int) -> list[httpx.Response]:
    """``count`` responses kept open at once: each holds one pooled connection until it is closed."""
    return list(await asyncio.gather(*(client.send(client.build_request("GET", path)) for _ in range(count))))


async def _close_all(responses: list[httpx.Response]) -> None:
    for response in responses:
        await response.aclose()


class _Entered(WrappingTransport):
    """Counts callers handed to the transport stack, so a test can wait for N of them."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        super().__init__(inner)
        self.count = 0
        self._changed = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.count += 1
        self._changed.set()
        return await self._inner.handle_async_request(request)

    async def reach(self, count: int) -> None:
        while self.count < count:
            self._changed.clear()
            await self._changed.wait()


async def _cancel_waiters_as_slots_free(
    client: UpstreamClient, hold_path: str, max_connections: int, waiters: int
) -> None:
    """Fill the pool, queue ``waiters`` more callers, then free the slots and cancel the queue.

    Each freed slot is handed to a waiter inside ``aclose``; the waiters are cancelled right after,
    before any of them runs again: the moment httpcore forgets the connection it just made.
    """
    held = await _hold(client, hold_path, max_connections)
    entered = _Entered(client.transport)
    client.transport = entered
    tasks = [asyncio.create_task(client.get("/keep")) for _ in range(waiters)]
    # A caller runs on from the count until it first suspends, waiting for a slot: when the test
    # resumes after the last count, every caller is queued.
    await entered.reach(waiters)
    client.transport = entered._inner
    await _close_all(held)
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError | httpx.Response) for r in results), results


async def _read_forever(client: UpstreamClient, reading: asyncio.Event) -> None:
    async with client.stream("GET", "/trickle") as response:
        async for _ in response.aiter_raw():
            reading.set()


async def _assert_every_slot_serves(client: UpstreamClient, max_connections: int) -> None:
    """``max_connections`` responses open at the same time: no slot was lost."""
    try:
        held = await _hold(client, "/keep", max_connections)
    except httpx.PoolTimeout:
        pytest.fail(f"the pool no longer serves {max_connections} requests at once: a cancelled caller lost a slot")
    assert [r.status_code for r in held] == [200] * max_connections
    await _close_all(held)


@pytest.mark.parametrize(
    ("hold_path", "max_keepalive"),
    [("/close", None), ("/keep", 0)],
    ids=["upstream-closes", "keepalive-limit-evicts"],
)
async def test_cancelled_waiters_do_not_leak_pool_slots(
    upstream: Upstream, engine: Engine, hold_path: str, max_keepalive: int | None
) -> None:
    max_connections = 4
    async with _client(upstream, engine, max_connections=max_connections, max_keepalive=max_keepalive) as client:
        for _ in range(3):
            await _cancel_waiters_as_slots_free(client, hold_path, max_connections, waiters=2 * max_connections)
            await _assert_every_slot_serves(client, max_connections)


async def test_a_full_pool_still_times_out_as_a_pool_timeout(upstream: Upstream, engine: Engine) -> None:
    settings = HttpSettings(engine=engine, max_connections=1, pool_timeout_s=0.05, http2=False)
    async with build_client(settings, base_url=upstream.base_url, headers={}) as client:
        held = await _hold(client, "/keep", 1)
        with pytest.raises(httpx.PoolTimeout):
            await client.get("/keep")
        await _close_all(held)
        assert (await client.get("/keep")).status_code == 200  # the timed-out caller took no slot with it


async def test_failed_and_abandoned_requests_give_their_slot_back(upstream: Upstream, engine: Engine) -> None:
    async with _client(upstream, engine, max_connections=1) as client:
        for _ in range(2):
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get("/drop")  # the upstream hangs up without answering
        async with client.stream("GET", "/keep") as response:
            assert response.status_code == 200  # closed unread: the slot comes back with the body
        cut = await client.send(client.build_request("GET", "/cut"))
        with pytest.raises(httpx.RemoteProtocolError):
            await cut.aread()  # the body fails mid-way; nobody calls aclose
        reading = asyncio.Event()
        task = asyncio.create_task(_read_forever(client, reading))
        started = asyncio.create_task(reading.wait())
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if task.done():
            task.result()  # it never got to read: its error is the finding
        task.cancel()  # mid-body, inside the caller's ``stream`` block
        with pytest.raises(asyncio.CancelledError):
            await task
        await _assert_every_slot_serves(client, 1)
