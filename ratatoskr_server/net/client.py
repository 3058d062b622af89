"""The providers' HTTP client: httpx's request and response models, sent straight into the transport.

Why not ``httpx.AsyncClient``: on a proxied call its own per-request machinery cost about as much
CPU as the whole engine under it (``bench/http_engine.py``: 0.53 ms per small chat completion
through ``AsyncClient`` on aiohttp's pool, 0.31 ms with the same request handed to the same
transport, 0.24 ms on bare aiohttp).  Most of it buys nothing here:
- URL merging and re-parsing on every call, where an adapter calls the same few URLs all day (they
  are parsed once and kept);
- a cookie jar, which a gateway must not have at all: one pooled client serves every caller, so an
  upstream's cookie set on one caller's answer would ride on the next caller's call;
- auth and redirect loops (adapters send their credentials as headers; redirects are never
  followed, a 3xx comes back as it is), and request hooks nobody sets (response hooks stay: an
  adapter maps an answer every call can get, such as a cold model's, in one place).

What stays is the httpx API the adapters and their error mapping are written against
(``httpx.Request``, ``httpx.Response``, httpx's exceptions), the transport stack (``net/http.py``:
request slots, the egress guard, tracing) and its timeouts, which travel in the request's
``timeout`` extension as ``AsyncClient`` puts them.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from json import JSONEncoder
from types import TracebackType
from typing import Any, Self, TypedDict, Unpack

import httpx

#: What ``AsyncClient`` sends unless told otherwise, so an upstream sees the same request as before.
_DEFAULT_HEADERS = {
    "Accept": "*/*",
    "Accept-Encoding": "gzip, deflate",
    "Connection": "keep-alive",
    "User-Agent": f"python-httpx/{httpx.__version__}",
}


class RequestOptions(TypedDict, total=False):
    """What a call may add to a request: query parameters, headers, and a JSON or raw body."""

    params: Mapping[str, str]
    headers: Mapping[str, str]
    json: Any
    content: bytes


#: httpx's JSON body encoding, as one kept encoder (``json.dumps`` with these arguments builds one per call).
_encode_json = JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
#: Parsed URLs kept per client; adapters call a handful, but a model name can sit in a path.
_MAX_URLS = 256
#: Methods httpx gives a ``Content-Length: 0`` when they carry no body.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class UpstreamClient:
    """Sends requests to one provider's upstream through ``transport``; see the module docstring."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        base_url: str = "",
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout,
    ) -> None:
        self.transport = transport
        self.base_url = httpx.URL(base_url)
        if self.base_url and not self.base_url.raw_path.endswith(b"/"):
            self.base_url = self.base_url.copy_with(raw_path=self.base_url.raw_path + b"/")
        #: Fixed once built: every kept URL starts from a copy of them.
        self.headers = httpx.Headers(_DEFAULT_HEADERS)
        self.headers.update(headers or {})
        self.timeout = timeout
        self._timeouts = timeout.as_dict()
        #: Each URL parsed once, with the headers its requests start from.
        self._urls: dict[str, tuple[httpx.URL, list[tuple[bytes, bytes]]]] = {}
        self.is_closed = False
        #: Run on every response, streamed or not, before anyone reads it; one that raises closes it.
        self.response_hooks: list[Callable[[httpx.Response], Awaitable[None]]] = []

    def url(self, url: str) -> tuple[httpx.URL, list[tuple[bytes, bytes]]]:
        """``url`` parsed (once), appended to the base URL when it is relative as httpx does, with
        the headers every request to it starts from: ``Host`` first, then the client's headers, and
        the ``Authorization`` its user-info stands for (``https://user:pass@host``) as httpx sends
        it: user-info never goes on the wire itself, and it wins over a configured header."""
        kept = self._urls.get(url)
        if kept is None:
            parsed = httpx.URL(url)
            if parsed.is_relative_url and self.base_url:
                parsed = self.base_url.copy_with(raw_path=self.base_url.raw_path + parsed.raw_path.lstrip(b"/"))
            headers = self.headers.copy()
            if parsed.username or parsed.password:
                pair = f"{parsed.username}:{parsed.password}".encode()
                headers["Authorization"] = f"Basic {base64.b64encode(pair).decode('ascii')}"
            raw = headers.raw
            if parsed.host and "Host" not in headers:
                raw.insert(0, (b"Host", parsed.netloc))
            if len(self._urls) >= _MAX_URLS:
                self._urls.clear()
            kept = self._urls[url] = (parsed, raw)
        return kept

    def build_request(self, method: str, url: str, **options: Unpack[RequestOptions]) -> httpx.Request:
        """The request httpx would build for these arguments, headers included, made from the kept
        URL and its headers: httpx's own constructor re-derives the headers' encoding and copies
        them twice per request, a tenth of a small call's CPU here."""
        target, raw = self.url(url)
        params, headers = options.get("params"), options.get("headers")
        if params:
            target = target.copy_merge_params(params)
        json, content = options.get("json"), options.get("content")
        body: list[tuple[bytes, bytes]] = []
        if json is not None:
            content = _encode_json(json).encode()
            body = [(b"Content-Length", str(len(content)).encode()), (b"Content-Type", b"application/json")]
        elif content is not None:
            body = [(b"Content-Length", str(len(content)).encode())]
        elif method in _BODY_METHODS:
            body = [(b"Content-Length", b"0")]
        if headers:
            # The call's own headers replace the client's, and win over the body's, as in httpx.
            given = httpx.Headers(headers)
            if target.userinfo:  # as httpx's BasicAuth: the URL's credentials win over a call's header too
                given.pop("Authorization", None)
            names = {name.lower() for name, _ in given.raw}
            raw = [item for item in raw if item[0].lower() not in names] + given.raw
            body = [item for item in body if item[0].lower() not in names]
        # A fresh extensions dict per request: a transport may add to it, and that must not reach the next one.
        request = httpx.Request(
            method,
            target,
            headers=raw + body,
            stream=httpx.ByteStream(content or b""),
            extensions={"timeout": self._timeouts},
        )
        request.read()  # the body is in memory already: ``request.content`` answers, as with httpx's own
        return request

    async def send(self, request: httpx.Request) -> httpx.Response:
        """The response with its body still to read (the caller closes it), or httpx's exception."""
        try:
            response = await self.transport.handle_async_request(request)
        except httpx.RequestError as err:
            err.request = request  # as AsyncClient does: the error names what it was sending
            raise
        response.request = request
        try:
            for hook in self.response_hooks:
                await hook(response)
        except BaseException:
            await response.aclose()
            raise
        return response

    async def request(self, method: str, url: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        """The whole response, its body read and its connection handed back."""
        response = await self.send(self.build_request(method, url, **options))
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def get(self, url: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        return await self.request("GET", url, **options)

    async def post(self, url: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        return await self.request("POST", url, **options)

    @asynccontextmanager
    async def stream(self, method: str, url: str, **options: Unpack[RequestOptions]) -> AsyncIterator[httpx.Response]:
        """The response as it arrives; closed (its connection handed back) when the block ends."""
        response = await self.send(self.build_request(method, url, **options))
        try:
            yield response
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        self.is_closed = True
        await self.transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
