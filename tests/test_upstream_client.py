"""The providers' HTTP client (``net/client.py``) against a real loopback upstream, on both engines.

It sends httpx's requests straight into the transport stack, so what ``httpx.AsyncClient`` did for
the adapters is held here: URLs, query parameters, default and per-call headers, timeouts, errors
that name their request, redirects returned as they are; and what a shared gateway client must not
do, keep an upstream's cookies for the next caller.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any, Literal

import aiohttp
import httpx
import pytest
from aiohttp import web
from aiohttp.client_reqrep import ConnectionKey

from ratatoskr_server.config import HttpSettings
from ratatoskr_server.net.aio import _mapped
from ratatoskr_server.net.client import UpstreamClient
from ratatoskr_server.net.http import build_client
from tests.conftest import free_port
from tests.upstreams.harness import Upstream, serve


async def _echo(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    return web.json_response({"path": request.path, "query": dict(request.query), "body": await request.text()})


async def _set_cookie(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    return web.json_response({}, headers={"Set-Cookie": "session=caller-a; Path=/"})


async def _moved(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    return web.Response(status=302, headers={"Location": "/v1/echo"})


async def _slow(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    await asyncio.sleep(5)
    return web.Response(text="late")


async def _long(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for i in range(64):
        await response.write(f"line {i}\n".encode() * 512)
    await response.write_eof()
    return response


async def _hang_up(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.close()
    return web.Response()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    routes = {
        ("GET", "/v1/echo"): _echo,
        ("POST", "/v1/echo"): _echo,
        ("GET", "/v1/cookie"): _set_cookie,
        ("GET", "/v1/moved"): _moved,
        ("GET", "/v1/slow"): _slow,
        ("GET", "/v1/drop"): _hang_up,
        ("GET", "/v1/long"): _long,
    }
    with serve(routes) as up:
        yield up


@pytest.fixture(params=["aiohttp", "httpcore"])
def settings(request: pytest.FixtureRequest) -> HttpSettings:
    engine: Literal["aiohttp", "httpcore"] = request.param
    return HttpSettings(engine=engine, max_connections=1, read_timeout_s=0.3, pool_timeout_s=5.0, http2=False)


def _client(upstream: Upstream, settings: HttpSettings, base: str = "/v1") -> UpstreamClient:
    return build_client(settings, base_url=f"{upstream.base_url}{base}", headers={"X-Adapter": "kept"})


async def test_urls_params_and_headers_reach_the_upstream(upstream: Upstream, settings: HttpSettings) -> None:
    async with _client(upstream, settings) as client:
        relative = await client.post("/echo?a=1", json={"q": "é"}, params={"b": "2"})
        absolute = await client.get(f"{upstream.base_url}/v1/echo", params={"c": "3"})
        again = await client.post("echo?a=1", json={"q": "é"}, params={"b": "2"})  # a kept URL, same answer
    assert relative.json() == {"path": "/v1/echo", "query": {"a": "1", "b": "2"}, "body": '{"q":"é"}'}
    assert absolute.json()["query"] == {"c": "3"}
    assert again.json() == relative.json()
    sent = upstream.requests[-3].headers
    assert sent["X-Adapter"] == "kept" and sent["Content-Type"] == "application/json"
    assert sent["User-Agent"].startswith("python-httpx/") and "gzip" in sent["Accept-Encoding"]
    assert relative.request.url.path == "/v1/echo"  # the response names its request, as httpx's do


async def test_an_upstreams_cookie_never_rides_on_a_later_call(upstream: Upstream, settings: HttpSettings) -> None:
    async with _client(upstream, settings) as client:
        await client.get("/cookie")
        await client.get("/echo")
    assert upstream.requests[-2].path == "/v1/cookie"
    assert "Cookie" not in upstream.requests[-1].headers


async def test_redirects_come_back_unfollowed(upstream: Upstream, settings: HttpSettings) -> None:
    async with _client(upstream, settings) as client:
        response = await client.get("/moved")
    assert response.status_code == 302 and response.headers["Location"] == "/v1/echo"


async def test_timeouts_and_failures_raise_httpx_errors_naming_the_request(
    upstream: Upstream, settings: HttpSettings
) -> None:
    async with _client(upstream, settings) as client:
        with pytest.raises(httpx.ReadTimeout) as slow:
            await client.get("/slow")
        with pytest.raises(httpx.RemoteProtocolError) as dropped:
            await client.get("/drop")
        assert (await client.get("/echo")).status_code == 200  # the one slot came back after each
    assert slow.value.request.url.path == "/v1/slow"
    assert dropped.value.request.url.path == "/v1/drop"


async def test_a_response_hook_that_raises_closes_the_response(upstream: Upstream, settings: HttpSettings) -> None:
    seen: list[int] = []

    async def refuse(response: httpx.Response) -> None:
        seen.append(response.status_code)
        if response.request.url.path.endswith("/moved"):
            raise RuntimeError("refused by the adapter")

    async with _client(upstream, settings) as client:
        client.response_hooks.append(refuse)
        for _ in range(2):
            with pytest.raises(RuntimeError, match="refused by the adapter"):
                async with client.stream("GET", "/moved"):
                    pass
        async with client.stream("GET", "/echo") as response:  # one slot: it was handed back each time
            assert response.status_code == 200
    assert seen == [302, 302, 200]


async def test_url_credentials_go_as_basic_auth_never_on_the_wire(upstream: Upstream, settings: HttpSettings) -> None:
    with_credentials = upstream.base_url.replace("http://", "http://user:p%40ss@")
    async with build_client(settings, base_url="", headers={}) as client:
        await client.get(f"{with_credentials}/v1/echo")
        await client.get(f"{with_credentials}/v1/echo")  # the kept URL keeps its credentials
    for sent in upstream.requests[-2:]:
        assert sent.headers["Authorization"] == f"Basic {base64.b64encode(b'user:p@ss').decode()}"
        assert sent.path == "/v1/echo"


async def test_a_body_left_half_read_frees_its_connection_and_slot(upstream: Upstream, settings: HttpSettings) -> None:
    """A caller that stops reading (a client gone mid-stream) must not leave a connection that the
    next call reads the rest of the old body from, nor keep the one slot."""
    async with _client(upstream, settings) as client:
        for _ in range(3):
            async with client.stream("GET", "/long") as response:
                async for chunk in response.aiter_bytes():
                    assert chunk.startswith(b"line 0")
                    break
        answer = await client.get("/echo")
    assert answer.json()["path"] == "/v1/echo"


async def test_a_refused_connection_is_a_connect_error(settings: HttpSettings) -> None:
    port = free_port()
    async with build_client(settings, base_url=f"http://127.0.0.1:{port}/v1", headers={}) as client:
        with pytest.raises(httpx.ConnectError) as refused:
            await client.get("/echo")
    assert refused.value.request.url.port == port


def test_aiohttp_errors_map_to_what_httpcore_raises_for_the_same_event() -> None:
    key = ConnectionKey("upstream", 443, True, True, None, None, None)
    table: list[tuple[Exception, type[httpx.TransportError]]] = [
        (aiohttp.ConnectionTimeoutError("connect"), httpx.ConnectTimeout),
        (aiohttp.SocketTimeoutError("read"), httpx.ReadTimeout),
        (aiohttp.ServerTimeoutError("timed out"), httpx.TimeoutException),
        (aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused")), httpx.ConnectError),
        (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError),
        (aiohttp.ClientPayloadError("short body"), httpx.RemoteProtocolError),
        (aiohttp.ClientConnectionResetError("Cannot write to closing transport"), httpx.WriteError),
        (aiohttp.ClientOSError(104, "reset by peer"), httpx.ReadError),
        (aiohttp.ClientConnectionError("Connection closed"), httpx.NetworkError),
        (aiohttp.InvalidURL("http://[::1"), httpx.UnsupportedProtocol),
        (
            aiohttp.ClientResponseError(None, (), status=400, message="Invalid response status"),  # type: ignore[arg-type]
            httpx.RemoteProtocolError,
        ),
    ]
    for cause, expected in table:
        mapped = _mapped(cause)
        assert type(mapped) is expected, (cause, mapped)
        assert str(mapped), cause  # a message a person can read, never empty


@pytest.mark.parametrize(
    ("method", "url", "options"),
    [
        ("POST", "/chat/completions", {"json": {"model": "m", "messages": [{"role": "user", "content": "héllo"}]}}),
        ("GET", "/models", {"params": {"limit": "5"}}),
        ("POST", "/empty", {}),
        ("PUT", "/raw", {"content": b"\x00bytes"}),
        (
            "POST",
            "/typed",
            {"json": [1, 2], "headers": {"content-type": "application/vnd.x+json", "X-Adapter": "call"}},
        ),
        ("GET", "http://user:secret@other.example:8443/v2/x", {}),
        ("GET", "http://user:secret@other.example/v2/x", {"headers": {"Authorization": "Bearer call", "X-A": "1"}}),
    ],
)
async def test_requests_are_what_httpx_builds_for_the_same_call(method: str, url: str, options: dict[str, Any]) -> None:
    """The request is made from kept parts, not by httpx's constructor; what it carries (URL,
    headers, body) must still be exactly what ``httpx.AsyncClient`` builds for the same call."""
    base, headers = "https://api.example/v1", {"Authorization": "Bearer k", "X-Adapter": "kept"}
    ours = UpstreamClient(httpx.AsyncHTTPTransport(), base_url=base, headers=headers, timeout=httpx.Timeout(5.0))
    async with httpx.AsyncClient(base_url=base, headers=headers) as reference:
        for _ in range(2):  # the second time from the kept URL
            built = ours.build_request(method, url, **options)
            expected = reference.build_request(method, url, **options)
            if expected.url.userinfo:  # AsyncClient's auth flow turns these into a header when it sends
                pair = f"{expected.url.username}:{expected.url.password}".encode()
                expected.headers["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"
            assert built.url == expected.url
            assert sorted(built.headers.multi_items()) == sorted(expected.headers.multi_items())
            assert built.headers.raw[0][0] == b"Host"
            assert built.content == expected.content
    await ours.aclose()
