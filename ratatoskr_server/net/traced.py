"""An httpx transport that traces each upstream call and passes the trace on (``traceparent``).

Wrapped around a provider's transport only when tracing is on (``build_client``).  The span covers
the call from sending to the end of the response body (a stream's last chunk), so a slow upstream
shows up as a long child of the request.  Its attributes name the method, host, port and path,
never the query string or headers: those are where API keys travel.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from ratatoskr_server.net.wrapping import WrappingTransport
from ratatoskr_server.telemetry.tracing import Tracing


class _EndingStream(httpx.AsyncByteStream):
    """A response body that ends its span when it is closed (read to the end, failed or abandoned)."""

    def __init__(self, inner: httpx.AsyncByteStream, span: Span) -> None:
        self._inner = inner
        self._span: Span | None = span

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except BaseException as err:
            self._end(type(err).__name__)
            raise

    def _end(self, error: str = "") -> None:
        span, self._span = self._span, None
        if span is not None:
            if error:
                span.set_attribute("error.type", error)
                span.set_status(Status(StatusCode.ERROR, error))
            span.end()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._end()


class TracedTransport(WrappingTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, tracing: Tracing) -> None:
        super().__init__(inner)
        self._tracing = tracing

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self._tracing.current_recording():
            # An unsampled trace keeps no spans, but its id still travels upstream: only the header.
            self._tracing.inject(request.headers)
            return await self._inner.handle_async_request(request)
        url = request.url
        span = self._tracing.tracer.start_span(
            f"{request.method} {url.host}",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": request.method,
                "server.address": url.host,
                "server.port": url.port or (443 if url.scheme == "https" else 80),
                "url.path": url.path,
            },
        )
        with self._tracing.attached(span):
            self._tracing.inject(request.headers)
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException as err:
            span.set_attribute("error.type", type(err).__name__)
            span.set_status(Status(StatusCode.ERROR, type(err).__name__))
            span.end()
            raise
        span.set_attribute("http.response.status_code", response.status_code)
        if response.status_code >= 400:
            span.set_attribute("error.type", str(response.status_code))
            span.set_status(Status(StatusCode.ERROR))
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_EndingStream(response.stream, span),
            extensions=response.extensions,
        )
