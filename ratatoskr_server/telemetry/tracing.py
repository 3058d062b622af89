"""OpenTelemetry traces: one server span per request, children for the work inside it.

The request span follows the GenAI semantic conventions (name ``{gen_ai.operation.name}
{gen_ai.request.model}``, ``gen_ai.provider.name``, ``gen_ai.request.*``, ``gen_ai.response.*``,
``gen_ai.usage.*``) and adds ours under ``ratatoskr.*``: queue and inference time, tokens per second,
backend, privacy tier, budget held and charged, cache hits, retries, fallbacks, gateway overhead.
Its parent is the caller's W3C trace context (``traceparent`` from gRPC metadata or HTTP headers),
so a caller's trace continues through the gateway and, injected again, into the upstream.

``Tracing.off()`` is what runs unless ``[tracing] enabled``: ``enabled`` is False, the edge, chain and
HTTP clients check it once and build nothing, and the methods below are not reached.  When on,
spans are carried in the ``RequestContext`` (the request span) and in OpenTelemetry's context (the
current child), attached only around awaits, never across a generator's ``yield``: a stream's
consumer may close it from another task, where a context token would not detach.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ratatoskr_server import package_version
from ratatoskr_server.config import TracingSettings
from ratatoskr_server.context import RequestContext

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

#: The W3C headers read from a caller and written to an upstream.
TRACE_HEADERS = ("traceparent", "tracestate")
#: gen_ai.operation.name by RPC; RPCs not listed are named by their method.
OPERATIONS = {
    "Chat": "chat",
    "ChatStream": "chat",
    "Generate": "text_completion",
    "GenerateStream": "text_completion",
    "Embed": "embeddings",
    "Nli": "nli",
    "Classify": "classify",
}
#: ChatOptions fields as gen_ai.request.* attributes.
_REQUEST_PARAMETERS = {
    "temperature": "gen_ai.request.temperature",
    "max_tokens": "gen_ai.request.max_tokens",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
}
_PROPAGATOR = TraceContextTextMapPropagator()
_DEFAULT_ENDPOINTS = {"http": "http://127.0.0.1:4318/v1/traces", "grpc": "127.0.0.1:4317"}


def exporter_from_settings(settings: TracingSettings) -> SpanExporter:
    """The SDK's own OTLP exporter for ``settings.exporter``."""
    endpoint = settings.endpoint or _DEFAULT_ENDPOINTS[settings.exporter]
    headers = dict(settings.headers)
    if settings.exporter == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(
            endpoint=endpoint, insecure=settings.insecure, headers=headers, timeout=int(settings.export_timeout_s)
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=endpoint, headers=headers, timeout=settings.export_timeout_s)


class Tracing:
    """The process's tracer, or nothing at all (``off()``); injected where spans are made."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self._tracer = provider.get_tracer("ratatoskr", package_version()) if provider is not None else None

    @classmethod
    def off(cls) -> Tracing:
        return cls(None)

    @classmethod
    def from_settings(cls, settings: TracingSettings, exporter: SpanExporter | None = None) -> Tracing:
        """A provider exporting in batches to ``exporter`` (default: the OTLP one the settings name)."""
        if not settings.enabled:
            return cls.off()
        # The SDK is imported only when tracing is on: off, a start does not pay for it (about 10 ms).
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        resource = Resource.create(
            {"service.name": settings.service_name, "service.version": package_version(), **settings.resource}
        )
        provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
        processor = BatchSpanProcessor(
            exporter or exporter_from_settings(settings),
            max_queue_size=settings.max_queue_size,
            max_export_batch_size=min(settings.max_export_batch_size, settings.max_queue_size),
            schedule_delay_millis=settings.schedule_delay_ms,
            export_timeout_millis=settings.export_timeout_s * 1000,
        )
        provider.add_span_processor(processor)
        return cls(provider)

    @property
    def tracer(self) -> trace.Tracer:
        assert self._tracer is not None, "tracing is off: check Tracing.enabled first"
        return self._tracer

    def flush(self, timeout_s: float = 5.0) -> bool:
        return self.provider.force_flush(int(timeout_s * 1000)) if self.provider is not None else True

    def shutdown(self) -> None:
        """Export what is queued and stop the exporter's thread."""
        if self.provider is not None:
            self.provider.shutdown()

    # -- the request span ---------------------------------------------------------------------
    def start_request(self, rpc: str, ctx: RequestContext, model: str) -> Span:
        """The request's server span, child of the caller's trace context when it sent one."""
        parent = _PROPAGATOR.extract(ctx.trace_carrier) if ctx.trace_carrier else None
        operation = OPERATIONS.get(rpc)
        name = f"{operation} {model}" if operation and model else (operation or rpc)
        attributes: dict[str, Any] = {"rpc.method": rpc, "ratatoskr.request_id": ctx.request_id}
        if operation:
            attributes["gen_ai.operation.name"] = operation
        if model:
            attributes["gen_ai.request.model"] = model
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        ctx.span = span
        return span

    def end_request(self, ctx: RequestContext, code: str, overhead_ms: float) -> None:
        span = ctx.span
        if not isinstance(span, Span):
            return
        if span.is_recording():
            span.set_attributes(request_attributes(ctx, overhead_ms))
            if code != "OK":
                span.set_attribute("error.type", code)
                span.set_status(Status(StatusCode.ERROR, code))
        span.end()

    @staticmethod
    def recording(ctx: RequestContext) -> bool:
        """Whether this request's trace is kept: an unsampled one gets no child spans at all (its
        trace id still travels upstream)."""
        span = ctx.span
        return isinstance(span, Span) and span.is_recording()

    # -- the current span ---------------------------------------------------------------------
    @contextlib.contextmanager
    def attached(self, span: object) -> Iterator[None]:
        """``span`` as the current span inside the block (children and upstream calls hang from it)."""
        if not isinstance(span, Span):
            yield
            return
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield
        finally:
            otel_context.detach(token)

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
        """A child of the current span, current itself inside the block; failures mark it."""
        with self.tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span

    def start_child(self, name: str, attributes: Mapping[str, Any] | None = None) -> Span:
        """A child of the current span, not made current (the caller attaches it around its awaits)."""
        return self.tracer.start_span(name, attributes=attributes)

    @staticmethod
    def end(span: Span, failure: str = "") -> None:
        """End ``span``, marked failed with the error's name when there was one."""
        if failure:
            span.set_attribute("error.type", failure)
            span.set_status(Status(StatusCode.ERROR, failure))
        span.end()

    def current_link(self) -> SpanContext | None:
        """The current span's context, for a span elsewhere (a batch) to link to; None when unsampled."""
        context = trace.get_current_span().get_span_context()
        return context if context.is_valid and context.trace_flags.sampled else None

    @contextlib.contextmanager
    def linked_span(
        self, name: str, links: Sequence[SpanContext], attributes: Mapping[str, Any] | None = None
    ) -> Iterator[Span]:
        """A root span of its own, linked to each of ``links`` (a batch serves many requests)."""
        span = self.tracer.start_span(
            name,
            context=otel_context.Context(),
            links=[Link(link) for link in links],
            attributes=attributes,
            kind=SpanKind.INTERNAL,
        )
        with trace.use_span(span, end_on_exit=True, record_exception=True):
            yield span

    @staticmethod
    def current_recording() -> bool:
        """Whether the current span is kept (an unsampled request's span is current but not kept)."""
        return trace.get_current_span().is_recording()

    @staticmethod
    def inject(headers: MutableMapping[str, str]) -> None:
        """Write the current trace context (traceparent) into an upstream request's headers."""
        _PROPAGATOR.inject(headers)


def trace_carrier(pairs: Sequence[tuple[str, object]] | Mapping[str, str]) -> dict[str, str] | None:
    """The W3C trace headers among ``pairs`` (gRPC metadata, HTTP headers), or None without any."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    found = {k.lower(): v for k, v in items if isinstance(v, str) and k.lower() in TRACE_HEADERS}
    return found or None


def request_attributes(ctx: RequestContext, overhead_ms: float) -> dict[str, Any]:
    """The request span's attributes known once it ended: who answered, tokens, time, policy."""
    answered = ctx.answered
    attributes: dict[str, Any] = {"ratatoskr.overhead_ms": round(overhead_ms, 3)}
    if answered.provider:
        attributes["gen_ai.provider.name"] = answered.provider
        attributes["ratatoskr.backend"] = answered.backend
    if answered.response_model:
        attributes["gen_ai.response.model"] = answered.response_model
    if answered.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = (answered.finish_reason,)
    if answered.input_tokens:
        attributes["gen_ai.usage.input_tokens"] = answered.input_tokens
    if answered.output_tokens:
        attributes["gen_ai.usage.output_tokens"] = answered.output_tokens
    if answered.provider:
        attributes["ratatoskr.queue_time_ms"] = round(answered.queue_ms, 3)
        attributes["ratatoskr.inference_time_ms"] = round(answered.inference_ms, 3)
    if answered.output_tokens and answered.inference_ms > 0:
        attributes["ratatoskr.tokens_per_second"] = round(answered.output_tokens / (answered.inference_ms / 1000), 3)
    if answered.first_event_ms is not None:
        attributes["ratatoskr.time_to_first_chunk_ms"] = round(answered.first_event_ms, 3)
    options = answered.options
    if options is not None:
        for name, key in _REQUEST_PARAMETERS.items():
            value = getattr(options, name)
            if value is not None:
                attributes[key] = value
        if options.stop:
            attributes["gen_ai.request.stop_sequences"] = tuple(options.stop)
    if ctx.privacy_tier is not None:
        attributes["ratatoskr.privacy_tier"] = ctx.privacy_tier.value
    if answered.budget_reserved_usd is not None:
        attributes["ratatoskr.budget.reserved_usd"] = answered.budget_reserved_usd
    if answered.budget_settled_usd is not None:
        attributes["ratatoskr.budget.settled_usd"] = answered.budget_settled_usd
    attributes["ratatoskr.cache_hit"] = ctx.cache_hits > 0
    attributes["ratatoskr.retries"] = ctx.retries
    attributes["ratatoskr.fallbacks"] = ctx.fallbacks
    if ctx.fallbacks:
        attributes["ratatoskr.failed_over"] = tuple(ctx.notes.failed_over)
    if ctx.resumes:
        attributes["ratatoskr.stream_failovers"] = ctx.resumes
    return attributes
