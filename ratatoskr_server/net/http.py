"""HTTP clients for providers, built in one place so every upstream gets the same limits and guard.

Every socket goes through the egress guard (``net/guarded.py``): the privacy tier is checked on
the resolved address at connect time.

Timeouts (connect, read, write, pool) and connection pools come from ``[http]``.  The engine
under httpx is aiohttp's pool by default (``net/aio.py``: half the CPU per call); with
``engine = "httpcore"`` and ``http2 = true`` HTTP/2 is offered to every upstream (httpx
negotiates it over TLS with ALPN and stays on HTTP/1.1 where the upstream does not speak it).

The pool's slots are handed out here, not by httpcore. httpcore (1.0.9, encode/httpcore#1093)
loses a slot for good whenever a caller queued for a connection is cancelled just after the pool
made it a fresh one: the connection stays CONNECTING, owned by nobody, and once
``max_connections`` are lost every call fails with ``PoolTimeout`` against a healthy upstream.
The gateway cancels upstream calls routinely (a client hangs up, a deadline passes), so
``SlotTransport`` admits at most ``max_connections`` requests into httpcore's pool at once. With
no more requests than slots every request finds a connection the moment it enters (a free slot,
or an idle connection to replace), so httpcore never queues one and the cancelled-waiter path
never runs; callers wait on an asyncio semaphore instead, which forgets a cancelled waiter cleanly.
The price: ``max_connections`` now bounds a provider's requests in flight, also over HTTP/2,
where httpcore would have multiplexed more than one request on a connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

import httpx

from ratatoskr_server.config import HttpSettings
from ratatoskr_server.net.client import UpstreamClient
from ratatoskr_server.net.egress import EgressPolicy
from ratatoskr_server.net.guarded import GuardedTransport
from ratatoskr_server.net.traced import TracedTransport
from ratatoskr_server.net.wrapping import WrappingTransport
from ratatoskr_server.telemetry.tracing import Tracing


class _SlotReleasingStream(httpx.AsyncByteStream):
    """A response body that gives its request's slot back when it is closed, and only once.

    A response holds its connection until the body is closed (read to the end by ``send``, or
    closed by the ``stream`` context) or fails, so that is when the slot is free again, not when
    the headers arrive.
    """

    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except BaseException:
            await self.aclose()  # a body that failed mid-way frees its slot, as httpcore frees its connection
            raise

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class SlotTransport(WrappingTransport):
    """Admits at most ``max_connections`` requests at a time into an ``httpx.AsyncHTTPTransport``.

    A request waits here for a slot, bounded by the request's pool timeout (``httpx.PoolTimeout``,
    as httpcore would raise it), and keeps the slot until its response body is closed or the
    request fails.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, max_connections: int) -> None:
        super().__init__(inner)
        self._slots = asyncio.BoundedSemaphore(max_connections)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._acquire(request)
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self._slots.release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        # The body is wrapped in place: nothing has read it yet, and a new Response would copy its headers.
        response.stream = _SlotReleasingStream(response.stream, self._slots.release)
        return response

    async def _acquire(self, request: httpx.Request) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # free and nobody queued: taken without suspending, no timer
            return
        pool_timeout: float | None = request.extensions.get("timeout", {}).get("pool")
        try:
            async with asyncio.timeout(pool_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout(
                f"no free connection within the pool timeout ({pool_timeout:g}s)", request=request
            ) from None


def build_transport(
    settings: HttpSettings, *, egress: EgressPolicy | None = None, tracing: Tracing | None = None
) -> httpx.AsyncBaseTransport:
    """The transport stack every provider's requests go down: tracing (when on), request slots, and
    the guarded pool, whose every socket passes the egress guard (``egress``; without one, the
    Standard tier, still tightened by a request's own tier)."""
    limits = httpx.Limits(
        max_connections=settings.max_connections,
        max_keepalive_connections=settings.max_keepalive_connections,
    )
    # No certificate-bundle surprises from the environment either (trust_env=False inside).
    transport = GuardedTransport(egress or EgressPolicy(), http2=settings.http2, limits=limits, engine=settings.engine)
    outer: httpx.AsyncBaseTransport = SlotTransport(transport, settings.max_connections)
    if tracing is not None and tracing.enabled:
        outer = TracedTransport(outer, tracing)
    return outer


def build_client(
    settings: HttpSettings,
    *,
    base_url: str,
    headers: Mapping[str, str],
    egress: EgressPolicy | None = None,
    tracing: Tracing | None = None,
) -> UpstreamClient:
    """A provider's client over ``build_transport``'s stack, with ``[http]``'s timeouts.

    No proxy, netrc or certificate-bundle settings come from the environment: egress is what the
    configuration says.
    """
    return UpstreamClient(
        build_transport(settings, egress=egress, tracing=tracing),
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(
            connect=settings.connect_timeout_s,
            read=settings.read_timeout_s,
            write=settings.write_timeout_s,
            pool=settings.pool_timeout_s,
        ),
    )
