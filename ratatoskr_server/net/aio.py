"""aiohttp's connection pool as the engine under the providers' httpx clients.

Why: the providers speak httpx (its request and response models, its exceptions), but httpx's
own engine, httpcore, is the most expensive thing on a proxied call's path.  Measured against a
loopback upstream (``bench/http_engine.py``), one small chat completion costs about 0.46 ms of
CPU in the calling process through the providers' client on httpcore, 0.25 ms on this engine, and
0.16 ms on bare aiohttp.  The engine keeps the httpx API every adapter and test is written
against, so the saving comes without touching them.

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
import ipaddress
import socket
from collections.abc import AsyncIterator

import aiohttp
import httpx
import yarl
from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult

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


def _mapped(cause: Exception) -> httpx.TransportError:
    """The httpx error httpcore raises for the event aiohttp reported, so messages, retry decisions
    and tests read the same on either engine (one table, for the request and its body alike)."""
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(str(cause) or "connecting timed out")
    if isinstance(cause, aiohttp.SocketTimeoutError):
        return httpx.ReadTimeout(str(cause) or "reading timed out")
    if isinstance(cause, aiohttp.ServerTimeoutError):
        return httpx.TimeoutException(str(cause) or "timed out")
    if isinstance(cause, aiohttp.ClientConnectorError):  # refused, unreachable, DNS, TLS handshake
        return httpx.ConnectError(str(cause))
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError("the server closed the connection without a complete answer")
    if isinstance(cause, aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError("the server closed the connection before the body was complete")
    if isinstance(cause, aiohttp.ClientConnectionResetError):
        return httpx.WriteError(str(cause) or "the connection was closed while sending")
    if isinstance(cause, aiohttp.ClientOSError):
        return httpx.ReadError(str(cause))
    if isinstance(cause, aiohttp.ClientConnectionError):
        return httpx.NetworkError(str(cause) or "the connection failed")
    if isinstance(cause, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return httpx.UnsupportedProtocol(str(cause))
    if isinstance(cause, aiohttp.ClientResponseError):  # e.g. a malformed status line or header
        return httpx.RemoteProtocolError(f"the upstream's answer is not valid HTTP: {cause.message or cause.status}")
    return httpx.RemoteProtocolError(str(cause) or type(cause).__name__)


class _AioBody(httpx.AsyncByteStream):
    """An aiohttp response's body as httpx reads it; closing it hands the connection back to the
    pool when the body was read to the end, and closes the connection when it was not."""

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except aiohttp.ClientError as err:
            raise _mapped(err) from err

    async def aclose(self) -> None:
        response = self._response
        response.release()
        try:
            await response.wait_for_close()  # a request body still being written, as aiohttp's own exit waits
        except aiohttp.ClientError as err:
            raise _mapped(err) from err


#: yarl URLs kept per engine, by the httpx URL they were made from (``UpstreamClient`` keeps its
#: URLs, so a call finds its own here); bounded, since a model name can sit in a path.
_MAX_URLS = 256


class AioEngine(httpx.AsyncBaseTransport):
    """One tier's pool: an aiohttp session whose connector carries the guard, fed httpx requests.

    It hands each request to aiohttp's session itself, with the URL and timeout made once and
    kept, and maps aiohttp's errors in one place (httpx-aiohttp's transport, used before, rebuilt
    both on every call and mapped errors loosely, so they were mapped a second time here).
    """

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
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[int, tuple[httpx.URL, yarl.URL]] = {}
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
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
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # one upstream's cookies never ride on another call
            auto_decompress=False,  # httpx decodes
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None),  # per request, from httpx's timeouts
        )
        return self._session

    def _url(self, url: httpx.URL) -> yarl.URL:
        kept = self._urls.get(id(url))
        if kept is not None and kept[0] is url:  # the entry holds ``url``, so its id is not reused while kept
            return kept[1]
        if url.userinfo:
            # httpx has turned URL credentials into an Authorization header already; aiohttp
            # refuses a URL that carries them too, and they never go on the wire as a URL anyway.
            target = yarl.URL(str(url.copy_with(userinfo=b"")), encoded=True)
        else:
            target = yarl.URL(str(url), encoded=True)  # httpx's URL is percent-encoded already
        if len(self._urls) >= _MAX_URLS:
            self._urls.clear()
        self._urls[id(url)] = (url, target)
        return target

    def _timeout(self, timeouts: dict[str, float | None]) -> aiohttp.ClientTimeout:
        key = (timeouts.get("connect"), timeouts.get("read"), timeouts.get("pool"))
        found = self._timeouts.get(key)
        if found is None:
            # aiohttp's ``connect`` covers the wait for a pooled connection as well as connecting.
            found = self._timeouts[key] = aiohttp.ClientTimeout(sock_connect=key[0], sock_read=key[1], connect=key[2])
        return found

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        data: bytes | httpx.AsyncByteStream | None
        try:
            data = request.content or None
        except httpx.RequestNotRead:  # a streamed body: aiohttp frames it itself
            data = request.stream  # type: ignore[assignment]
            request.headers.pop("transfer-encoding", None)
        try:
            response = await session.request(
                request.method,
                self._url(request.url),
                headers=request.headers.multi_items(),
                data=data,
                allow_redirects=False,
                timeout=self._timeout(request.extensions.get("timeout", {})),
                server_hostname=request.extensions.get("sni_hostname"),
            )
        except aiohttp.ClientError as err:
            raise _mapped(err) from err
        extensions: dict[str, object] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(
            status_code=response.status, headers=response.raw_headers, stream=_AioBody(response), extensions=extensions
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        await asyncio.sleep(0)  # let aiohttp's closed transports finish before the loop may end
