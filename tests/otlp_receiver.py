"""A loopback OTLP/HTTP trace receiver: decodes what the SDK's own exporter sends (protobuf).

It speaks the collector's side of OTLP/HTTP (POST /v1/traces, ``application/x-protobuf``
ExportTraceServiceRequest in, ExportTraceServiceResponse out) and keeps every span it was sent as
a plain ``ReceivedSpan`` so tests can read the span tree.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.upstreams.harness import Upstream, serve

PATH = "/v1/traces"


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    #: (trace id, span id) of each linked span.
    links: tuple[tuple[str, str], ...]
    status_code: int
    resource: dict[str, Any] = field(default_factory=dict)


@dataclass
class Receiver:
    upstream: Upstream
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"{self.upstream.base_url}{PATH}"

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.upstream.state.get("spans", []))

    @property
    def raw(self) -> list[bytes]:
        """Every export body as sent (for the redaction sweep)."""
        with self.lock:
            return list(self.upstream.state.get("raw", []))

    def wait_for(self, found: Callable[[list[ReceivedSpan]], bool], timeout: float = 30.0) -> list[ReceivedSpan]:
        """The spans once ``found`` holds for them (the exporter sends on its schedule)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.spans
            if found(spans):
                return spans
            time.sleep(0.05)
        raise AssertionError(f"the expected spans did not arrive within {timeout}s; got {[s.name for s in self.spans]}")

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]


def _decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    out = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=span.kind,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                        status_code=span.status.code,
                        resource=resource,
                    )
                )
    return out


@contextmanager
def otlp_receiver() -> Iterator[Receiver]:
    holder: dict[str, Receiver] = {}

    async def traces(request: web.Request, upstream: Upstream) -> web.StreamResponse:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text="OTLP/HTTP protobuf only")
        body = await request.read()
        spans = _decode(body)
        receiver = holder["receiver"]
        with receiver.lock:
            upstream.state.setdefault("spans", []).extend(spans)
            upstream.state.setdefault("raw", []).append(body)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    with serve({("POST", PATH): traces}) as upstream:
        holder["receiver"] = Receiver(upstream)
        yield holder["receiver"]
