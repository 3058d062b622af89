"""The egress guard wired into httpx: a network backend that checks before it connects, and a
transport that keeps one connection pool per tier.

``GuardedBackend`` is what httpcore calls to open a socket: it resolves the host once, has the
policy check every address, and connects to the checked address itself (TLS still verifies and
sends SNI for the hostname: httpcore takes those from the request's origin, not from the socket).
A refusal raises before any socket exists, so the forbidden host sees no connection and no byte.

``GuardedTransport`` picks the pool by the tier the request is held to, on one of two engines:
aiohttp's pool (``net/aio.py``, the default: it costs half the CPU per call) or httpx's own,
httpcore, with the backend above (the one that speaks HTTP/2).  Pooled connections are
reused by later requests, and a connection opened for a Standard request must never carry a
Sovereign one; with a pool per tier, a connection only ever serves requests held to the tier it
was checked against.  In practice one tier is in use and there is one pool.
"""

from __future__ import annotations

import asyncio
import ssl
import typing
from types import TracebackType
from typing import TYPE_CHECKING, Literal

import httpcore
import httpx

from ratatoskr_client.types import PrivacyTier
from ratatoskr_server.net.egress import EgressPolicy

if TYPE_CHECKING:
    from ratatoskr_server.net.aio import AioEngine


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to addresses ``policy`` allows under ``tier``."""

    def __init__(self, policy: EgressPolicy, tier: PrivacyTier, inner: httpcore.AsyncNetworkBackend | None = None):
        self.policy = policy
        self.tier = tier
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self.policy.resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} took longer than {timeout:g}s") from None
        except OSError as err:
            raise httpcore.ConnectError(f"cannot resolve {host}: {err}") from None
        self.policy.check(host, addresses, self.tier)  # EgressRefused: nothing was opened
        failure: Exception | None = None
        for address in addresses:  # connect to what was checked, never to the name again
            try:
                return await self.inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as err:
                failure = err
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # A Unix socket is this host: every tier may use it.
        return await self.inner.connect_unix_socket(path, timeout=timeout, socket_options=socket_options)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncBaseTransport):
    """httpx transports (one per tier in use, built on first need) whose sockets pass the guard."""

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        http2: bool,
        limits: httpx.Limits,
        engine: Literal["aiohttp", "httpcore"] = "aiohttp",
        inner_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self._aio: type[AioEngine] | None = None
        if engine == "aiohttp":
            # Imported when the first client is built (at start, with the providers), not on a
            # request's path, and not at all by a daemon that has no upstream.
            from ratatoskr_server.net.aio import AioEngine

            self._aio = AioEngine
        self._http2 = http2
        self._limits = limits
        self._backend = inner_backend
        # Built once: loading the CA bundle costs milliseconds, too much for a first request's path.
        self._ssl: ssl.SSLContext = httpx.create_ssl_context(trust_env=False)
        self._pools: dict[PrivacyTier, httpx.AsyncBaseTransport] = {}

    def _pool(self, tier: PrivacyTier) -> httpx.AsyncBaseTransport:
        pool = self._pools.get(tier)
        if pool is None:
            pool = self._build(tier)
            self._pools[tier] = pool
        return pool

    def _build(self, tier: PrivacyTier) -> httpx.AsyncBaseTransport:
        if self._aio is not None:
            return self._aio(self.policy, tier, limits=self._limits, ssl_context=self._ssl)
        pool = httpx.AsyncHTTPTransport(verify=self._ssl, http2=self._http2, limits=self._limits, trust_env=False)
        # httpx does not expose httpcore's network_backend; its pool is rebuilt with ours.
        pool._pool = httpcore.AsyncConnectionPool(
            ssl_context=self._ssl,
            max_connections=self._limits.max_connections,
            max_keepalive_connections=self._limits.max_keepalive_connections,
            keepalive_expiry=self._limits.keepalive_expiry,
            http1=True,
            http2=self._http2,
            network_backend=GuardedBackend(self.policy, tier, self._backend),
        )
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._pool(self.policy.effective()).handle_async_request(request)

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()

    async def __aenter__(self) -> GuardedTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
