"""aiohttp's connection pool as the engine under the providers' httpx clients.

Why: the providers speak httpx (its request and response models, its exceptions), but httpx's
own engine, httpcore, is the most expensive thing on a proxied call's path.  Measured against a
loopback upstream in one run (``bench/http_engine.py``), one small chat completion costs about
1.4 ms of CPU through httpx on httpcore, 0.7 ms through httpx on aiohttp (httpx-aiohttp's
transport), and 0.3 ms on bare aiohttp.  The transport keeps the httpx API every adapter and
test is written against, so the saving comes without touching them.  (Most of what was left
above bare aiohttp was ``httpx.AsyncClient`` itself, which ``net/client.py`` no longer uses.)

The egress guard sits in aiohttp's connector, at the two places an address is chosen:
- ``GuardedResolver`` resolves a name through the policy (once: aiohttp connects to what it
  returns, never to the name again) and refuses it unless every address satisfies the tier;
- ``GuardedSockets`` is the connector's socket factory: it checks the address each socket is
  about to reach.  aiohttp skips the resolver for an address literal, so a literal is judged
  here, as itself; a resolved name's addresses are judged again as the name they came from.
A refusal raises before ``connect`` is called, so the host sees no connection and no byte.

aiohttp speaks HTTP/1.1 only; ``[http] engine = "httpcore"`` keeps httpx's own engine, which
negotiates HTTP/2 where ``http2`` is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx
from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult
from httpx_aiohttp import AiohttpTransport

from ratatoskr_client.types import PrivacyTier
from ratatoskr_server.net.egress import EgressPolicy, IPAddress

#: Names resolved by this process's connectors, by address: a bounded memory, so an address
#: reached through a declared name is judged as that name at connect time.
_MAX_NAMES = 1024


class GuardedResolver(AbstractResolver):
    """Resolves through the egress policy and refuses a name unless all its addresses pass."""

    def __init__(self, policy: EgressPolicy, tier: PrivacyTier, names: dict[IPAddress, str]) -> None:
        self.policy = policy
        self.tier = tier
        self._names = names

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        addresses = await self.policy.resolve(host, port)
        self.policy.check(host, addresses, self.tier)  # EgressRefused: nothing was opened
        if len(self._names) > _MAX_NAMES:
            self._names.clear()
        results: list[ResolveResult] = []
        for address in addresses:
            self._names[address] = host
            results.append(
                {
                    "hostname": host,
                    "host": str(address),
                    "port": port,
                    "family": socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST,
                }
            )
        return results

    async def close(self) -> None:
        return None


class GuardedSockets:
    """The connector's socket factory: no socket toward an address the tier forbids."""

    def __init__(self, policy: EgressPolicy, tier: PrivacyTier, names: dict[IPAddress, str]) -> None:
        self.policy = policy
        self.tier = tier
        self._names = names

    def __call__(self, addr_info: AddrInfoType) -> socket.socket:
        family, kind, proto, _canonical, sockaddr = addr_info
        address = _address(str(sockaddr[0]))
        self.policy.check(self._names.get(address, str(address)), (address,), self.tier)
        return socket.socket(family=family, type=kind, proto=proto)


def _address(text: str) -> IPAddress:
    parsed = ipaddress.ip_address(text.split("%", 1)[0])
    mapped = parsed.ipv4_mapped if isinstance(parsed, ipaddress.IPv6Address) else None
    return mapped or parsed


def _remapped(cause: BaseException) -> httpx.TransportError | None:
    """The httpx error httpcore would have raised for what aiohttp raised, or None to keep it."""
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(str(cause) or "connecting timed out")
    if isinstance(cause, aiohttp.SocketTimeoutError):
        return httpx.ReadTimeout(str(cause) or "reading timed out")
    if isinstance(cause, aiohttp.ClientConnectorError):  # refused, unreachable, DNS, TLS handshake
        return httpx.ConnectError(str(cause))
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError("the server closed the connection without a complete answer")
    if isinstance(cause, aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError("the server closed the connection before the body was complete")
    if isinstance(cause, aiohttp.ClientOSError):
        return httpx.ReadError(str(cause))
    return None


@contextlib.contextmanager
def _mapped_errors() -> Iterator[None]:
    """httpx errors that say what happened, one table for both directions.

    httpx-aiohttp maps by the first loose match: a refused connection, or a server that hung up,
    comes out as ``httpx.ConnectTimeout``.  The error is mapped again here from aiohttp's own
    exception to what httpcore raises for the same event, so messages, retry decisions and tests
    read the same on either engine.
    """
    try:
        yield
    except httpx.TransportError as err:
        better = _remapped(err.__cause__) if err.__cause__ is not None else None
        if better is None:
            raise
        raise better from err.__cause__


class _MappedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped_errors():
            async for chunk in self._inner:
                yield chunk

    async def aclose(self) -> None:
        with _mapped_errors():
            await self._inner.aclose()


class AioEngine(httpx.AsyncBaseTransport):
    """One tier's pool: an aiohttp session whose connector carries the guard."""

    def __init__(
        self,
        policy: EgressPolicy,
        tier: PrivacyTier,
        *,
        limits: httpx.Limits,
        ssl_context: object,
    ) -> None:
        names: dict[IPAddress, str] = {}
        self._resolver = GuardedResolver(policy, tier, names)
        self._sockets = GuardedSockets(policy, tier, names)
        self._limits = limits
        self._ssl = ssl_context
        self._inner = AiohttpTransport(client=self._session)

    def _session(self) -> aiohttp.ClientSession:
        # Built on the first request, inside the running loop, as aiohttp requires.
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,
            limit_per_host=0,
            keepalive_timeout=self._limits.keepalive_expiry or 0,
            ssl=self._ssl,  # type: ignore[arg-type]
            resolver=self._resolver,
            use_dns_cache=False,  # every new connection resolves and is checked again
            socket_factory=self._sockets,
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # one upstream's cookies never ride on another call
            auto_decompress=False,  # httpx decodes
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None),  # per request, from httpx's timeouts
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.userinfo:
            # httpx has turned URL credentials into an Authorization header already; aiohttp
            # refuses a URL that carries them too, and they never go on the wire as a URL anyway.
            request.url = request.url.copy_with(userinfo=b"")
        with _mapped_errors():
            response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _MappedStream(response.stream)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
        await asyncio.sleep(0)  # let aiohttp's closed transports finish before the loop may end
