"""Traces out of a real daemon: the SDK's own OTLP/HTTP exporter to a loopback receiver, decoded.

A chat, a streamed chat and batched embeddings (real MiniLM) each continue the caller's trace
(traceparent in gRPC metadata), follow the GenAI conventions on the server span, hang the stages,
the upstream HTTP call and the pool's work below it, and pass the trace on to the upstream.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from ratatoskr_client._proto.ratatoskr.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2
from ratatoskr_client.types import ChatOptions, Message
from ratatoskr_server.config import TracingSettings, load_settings
from ratatoskr_server.edge import Edge
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.net.http import SlotTransport, build_client
from ratatoskr_server.net.traced import TracedTransport
from ratatoskr_server.telemetry.metrics import Metrics
from ratatoskr_server.telemetry.tracing import Tracing
from tests.conftest import MODEL, DaemonProcess
from tests.otlp_receiver import ReceivedSpan, Receiver, otlp_receiver
from tests.upstreams import openai_double
from tests.upstreams.harness import Upstream, serve

HI_MESSAGE = [Message("user", "hi")]
SERVER, CLIENT = 2, 3  # OTLP Span.SpanKind values
BATCH = 4  # embeds sent at once; the batch waits for all of them (max_batch_size = BATCH)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with otlp_receiver() as r:
        yield r


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as up:
        yield up


@pytest.fixture(scope="module")
def traced(model_root: Path, receiver: Receiver, upstream: Upstream) -> Iterator[DaemonProcess]:
    d = DaemonProcess(
        model_root,
        logging={"format": "json"},
        resilience={"attempts": 1},
        http_front={"enabled": True, "port": 0},
        tracing={
            "enabled": True,
            "endpoint": receiver.endpoint,
            "schedule_delay_ms": 20,
            "resource": {"deployment.environment": "test"},
        },
        providers={
            "openai": {"kind": "openai_compat", "base_url": f"{upstream.base_url}/v1", "api_key": "sk-trace-test-key"}
        },
        # One batch slot that waits (up to 10 s, far longer than the calls take to arrive) until
        # BATCH inputs are queued: the concurrent embeds ride in one batch, whatever the scheduling.
        local={"batching": {"max_batch_size": BATCH, "max_wait_ms": 10_000, "concurrency": 1}},
    ).start()
    yield d
    d.stop()


def _traceparent() -> tuple[str, str, str]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent}-01", trace_id, parent


def _by_name(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


def _server(spans: list[ReceivedSpan]) -> ReceivedSpan:
    [server] = [s for s in spans if s.kind == SERVER]
    return server


def _descends(spans: list[ReceivedSpan], span: ReceivedSpan, ancestor: ReceivedSpan) -> bool:
    by_id = {s.span_id: s for s in spans}
    current: ReceivedSpan | None = span
    while current is not None:
        if current.parent_span_id == ancestor.span_id:
            return True
        current = by_id.get(current.parent_span_id)
    return False


def _chat_request(model: str) -> gateway_pb2.ChatRequest:
    return gateway_pb2.ChatRequest(
        messages=[types_pb2.Message(role="user", content="Say hello")],
        options=types_pb2.ChatOptions(model=model, temperature=0.25, max_tokens=40, top_p=0.9),
    )


def _check_chat_tree(spans: list[ReceivedSpan], parent: str, upstream: Upstream, trace_id: str) -> ReceivedSpan:
    """The tree every chat shares; returns the server span."""
    server = _server(spans)
    assert server.parent_span_id == parent  # the caller's span is the parent
    assert server.name == "chat openai/gpt-4o-mini"
    attrs = server.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "openai/gpt-4o-mini"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.response.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["gen_ai.usage.input_tokens"] == openai_double.USAGE["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == openai_double.USAGE["completion_tokens"]
    assert attrs["gen_ai.request.temperature"] == 0.25
    assert attrs["gen_ai.request.max_tokens"] == 40
    assert attrs["gen_ai.request.top_p"] == 0.9
    assert attrs["ratatoskr.backend"] == "openai_compat"
    assert attrs["ratatoskr.inference_time_ms"] > 0
    assert attrs["ratatoskr.tokens_per_second"] > 0
    assert attrs["ratatoskr.retries"] == 0 and attrs["ratatoskr.fallbacks"] == 0
    assert attrs["ratatoskr.cache_hit"] is False
    assert attrs["ratatoskr.overhead_ms"] >= 0
    assert server.resource["service.name"] == "ratatoskr"
    assert server.resource["deployment.environment"] == "test"
    # The stages that did work, the dispatch, and the upstream call under it.
    names = {s.name for s in spans}
    for stage in ("stage LimitsStage", "stage PlanStage", "stage ParamsStage", "stage RetryStage", "dispatch"):
        assert stage in names, names
        assert all(_descends(spans, s, server) for s in _by_name(spans, stage))
    [dispatch] = _by_name(spans, "dispatch")
    [http] = [s for s in spans if s.kind == CLIENT]
    assert http.parent_span_id == dispatch.span_id
    assert http.attributes["http.request.method"] == "POST"
    assert http.attributes["url.path"] == "/v1/chat/completions"
    assert http.attributes["http.response.status_code"] == 200
    # The upstream was sent the trace, with the HTTP call's span as its parent.
    sent = [r.headers.get("traceparent", "") for r in upstream.requests if r.path == "/v1/chat/completions"]
    assert f"00-{trace_id}-{http.span_id}-01" in sent
    return server


def test_chat_continues_the_callers_trace_to_the_upstream(
    traced: DaemonProcess, receiver: Receiver, upstream: Upstream
) -> None:
    header, trace_id, parent = _traceparent()
    with grpc.insecure_channel(f"unix:{traced.socket}") as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        response, call = stub.Chat.with_call(
            _chat_request("openai/gpt-4o-mini"), metadata=[("traceparent", header)], timeout=30
        )
    assert response.message.content
    trailing = dict(call.trailing_metadata() or ())
    assert float(trailing["x-ratatoskr-overhead-ms"]) >= 0
    spans = receiver.wait_for(lambda s: any(x.trace_id == trace_id and x.kind == SERVER for x in s))
    server = _check_chat_tree(receiver.trace(trace_id), parent, upstream, trace_id)
    assert "ratatoskr.time_to_first_chunk_ms" not in server.attributes  # unary: no chunks
    assert spans
    # The request's log line carries the same trace and its own span id.
    [line] = [r for r in traced.records() if r.get("msg") == "request" and r.get("trace_id") == trace_id]
    assert line["span_id"] == server.span_id and line["rpc"] == "Chat"


def test_streamed_chat_has_the_same_tree_and_a_time_to_first_chunk(
    traced: DaemonProcess, receiver: Receiver, upstream: Upstream
) -> None:
    header, trace_id, parent = _traceparent()
    with grpc.insecure_channel(f"unix:{traced.socket}") as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        call = stub.ChatStream(_chat_request("openai/gpt-4o-mini"), metadata=[("traceparent", header)], timeout=30)
        events = list(call)
        trailing = dict(call.trailing_metadata() or ())
    assert events[-1].WhichOneof("event") == "done"
    assert float(trailing["x-ratatoskr-overhead-ms"]) >= 0
    receiver.wait_for(lambda s: any(x.trace_id == trace_id and x.kind == SERVER for x in s))
    spans = receiver.trace(trace_id)
    server = _check_chat_tree(spans, parent, upstream, trace_id)
    assert server.attributes["rpc.method"] == "ChatStream"
    assert server.attributes["ratatoskr.time_to_first_chunk_ms"] > 0
    # The span is attached around each event's wait only: no context token outlives its task.
    assert "Failed to detach context" not in traced.log()


def test_batched_embeds_share_one_batch_span_linked_to_each(traced: DaemonProcess, receiver: Receiver) -> None:
    callers = [_traceparent() for _ in range(BATCH)]

    def embed(header: str, i: int) -> gateway_pb2.EmbedResponse:
        with grpc.insecure_channel(f"unix:{traced.socket}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            request = gateway_pb2.EmbedRequest(model=MODEL, inputs=[f"text number {i} to embed"])
            response: gateway_pb2.EmbedResponse = stub.Embed(request, metadata=[("traceparent", header)], timeout=60)
            return response

    with ThreadPoolExecutor(BATCH) as pool:
        answers = list(pool.map(embed, [c[0] for c in callers], range(BATCH)))
    assert all(len(a.embeddings) == 1 for a in answers)
    trace_ids = {c[1] for c in callers}
    spans = receiver.wait_for(
        lambda s: (
            len({x.trace_id for x in s if x.kind == SERVER and x.trace_id in trace_ids}) == BATCH
            and any(x.name == f"batch {MODEL}" and {t for t, _ in x.links} & trace_ids for x in s)
        )
    )
    batches = [s for s in spans if s.name == f"batch {MODEL}" and {t for t, _ in s.links} & trace_ids]
    [batch] = batches  # one batch served all of them
    assert batch.attributes["ratatoskr.batch.size"] == BATCH
    assert batch.attributes["ratatoskr.batch.tokens"] >= BATCH
    assert batch.trace_id not in trace_ids  # a span of its own, linked, not a child of one request
    linked = dict(batch.links)
    assert set(linked) == trace_ids
    for _header, trace_id, parent in callers:
        mine = receiver.trace(trace_id)
        server = _server(mine)
        assert server.parent_span_id == parent
        assert server.name == f"embeddings {MODEL}"
        assert server.attributes["gen_ai.provider.name"] == "local"
        assert server.attributes["gen_ai.usage.input_tokens"] > 0
        assert server.attributes["ratatoskr.queue_time_ms"] >= 0
        # The batch links to a span inside this request's tree, and the pool admitted it there.
        by_id = {s.span_id: s for s in mine}
        assert linked[trace_id] in by_id and _descends(mine, by_id[linked[trace_id]], server)
        [admission] = _by_name(mine, "pool admission")
        assert _descends(mine, admission, server)
    # The preload at start was traced too (no request: a trace of its own).
    assert any(s.name == "model load" and s.attributes["ratatoskr.model"] == MODEL for s in spans)


def test_tracing_off_builds_nothing() -> None:
    """Off (the default): no provider, no edge tracer, no chain wrappers, no traced transport."""
    settings = load_settings(local={"preload": [], "auto_import_default": False})
    assert not settings.tracing.enabled
    tracing = Tracing.from_settings(settings.tracing)
    assert tracing.provider is None and not tracing.enabled
    assert Edge(Metrics(), 1, tracing).tracing is None
    client = build_client(settings.http, base_url="", headers={}, tracing=tracing)
    assert isinstance(client.transport, SlotTransport)
    on = Tracing.from_settings(TracingSettings(enabled=True, endpoint="http://127.0.0.1:9/v1/traces"))
    try:
        traced = build_client(settings.http, base_url="", headers={}, tracing=on)
        assert isinstance(traced.transport, TracedTransport)
    finally:
        on.shutdown()


def test_the_http_front_reads_traceparent_and_sends_the_overhead(traced: DaemonProcess, receiver: Receiver) -> None:
    [url] = [a for r in traced.records() if r.get("msg") == "listening" for a in r["listen"] if a.startswith("http")]
    header, trace_id, parent = _traceparent()
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"traceparent": header}, timeout=30)
    assert response.status_code == 200, response.text
    assert float(response.headers["x-ratatoskr-overhead-ms"]) >= 0
    receiver.wait_for(lambda s: any(x.trace_id == trace_id and x.kind == SERVER for x in s))
    server = _server(receiver.trace(trace_id))
    assert server.parent_span_id == parent
    assert server.name == "chat openai/gpt-4o-mini"


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """The collector's side of OTLP/gRPC: keeps each export request."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []

    def Export(self, request: ExportTraceServiceRequest, context: Any) -> ExportTraceServiceResponse:
        self.requests.append(request)
        return ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[_Collector, int]]:
    servicer = _Collector()
    server = grpc.server(ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(0)


def _embedded(model_root: Path, upstream: Upstream, **tracing: Any) -> EmbeddedGateway:
    return EmbeddedGateway(
        load_settings(
            local={"model_dir": model_root, "auto_import_default": False, "preload": []},
            providers={"openai": {"kind": "openai_compat", "base_url": f"{upstream.base_url}/v1"}},
            tracing={"enabled": True, **tracing},
        )
    )


async def test_otlp_over_grpc_exports_the_same_spans(
    model_root: Path, upstream: Upstream, collector: tuple[_Collector, int]
) -> None:
    servicer, port = collector
    gw = _embedded(model_root, upstream, exporter="grpc", endpoint=f"127.0.0.1:{port}", service_name="grpc-export")
    try:
        await gw.chat(HI_MESSAGE, ChatOptions(model="openai/gpt-4o-mini"))
        assert gw.gateway.tracing.flush()
    finally:
        await gw.close()
    names = [
        span.name
        for request in servicer.requests
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert "chat openai/gpt-4o-mini" in names and "dispatch" in names and "POST 127.0.0.1" in names


async def test_sampling_zero_exports_nothing_and_still_passes_the_trace_on(
    model_root: Path, upstream: Upstream, receiver: Receiver
) -> None:
    before = len(upstream.requests)
    gw = _embedded(model_root, upstream, endpoint=receiver.endpoint, sample_ratio=0.0, service_name="unsampled")
    try:
        await gw.chat(HI_MESSAGE, ChatOptions(model="openai/gpt-4o-mini"))
        assert gw.gateway.tracing.flush()
    finally:
        await gw.close()
    [sent] = upstream.requests[before:]
    version, trace_id, span_id, flags = sent.headers["traceparent"].split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16
    assert int(flags, 16) & 1 == 0  # a trace id, marked not sampled
    assert not [s for s in receiver.spans if s.resource.get("service.name") == "unsampled"]
