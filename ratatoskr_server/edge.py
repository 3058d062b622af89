"""What every request goes through, whichever way it came in: in-flight limit, metrics, one log line.

The gRPC front and the embedded gateway both wrap each call in ``Edge.admit``, so a limit, a
metric or a log field added here reaches every way in at once.  It speaks domain errors only:
a known failure leaves as the ``RatatoskrError`` it is; anything unexpected is logged with its
traceback and leaves as ``Internal`` naming the request id, so no caller ever sees a traceback.
Each front maps the error's ``code`` to its wire (gRPC status, HTTP status) in its own table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import TypeVar

from ratatoskr_client.errors import Internal, RatatoskrError, ResourceExhausted
from ratatoskr_server.context import RequestContext
from ratatoskr_server.telemetry.logs import trace_ids
from ratatoskr_server.telemetry.metrics import Metrics
from ratatoskr_server.telemetry.tracing import Tracing

log = logging.getLogger("ratatoskr.request")

T = TypeVar("T")

#: Longest status message sent: messages quote what the caller sent (a model name, a template), and a
#: status detail beyond the client's metadata limit (8 KiB by default) reaches it as a different error.
MAX_MESSAGE_CHARS = 2000
#: Longest caller-chosen value written into a log line.
MAX_LOGGED_CHARS = 200


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


class Edge:
    def __init__(self, metrics: Metrics, max_in_flight: int, tracing: Tracing | None = None) -> None:
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        #: The tracer when tracing is on; None costs a request nothing.
        self.tracing = tracing if tracing is not None and tracing.enabled else None

    @asynccontextmanager
    async def admit(
        self,
        rpc: str,
        ctx: RequestContext,
        *,
        model: str = "",
        limited: bool = True,
        attach: bool = True,
        transport: str = "grpc",
    ) -> AsyncIterator[None]:
        """Run one request's body under the limits; ``limited`` calls count against ``max_in_flight``.

        The log line, metrics and the request's span end once the body ends, however it ends.  With
        ``attach`` the span is the current one for the body (a unary call; a stream attaches it per
        event instead, see ``stream``).  ``transport`` ("grpc", "http", "embedded") labels the
        request metrics, as fronts share rpc names.
        """
        started = time.perf_counter()
        code = "OK"
        counted = False
        tracing = self.tracing
        scope: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if tracing is not None:
            span = tracing.start_request(rpc, ctx, model)
            if attach:
                scope = tracing.attached(span)
        try:
            if limited:
                if self.in_flight >= self.max_in_flight:
                    raise ResourceExhausted(
                        f"at the limit of {self.max_in_flight} requests in flight (server.max_in_flight); "
                        "retry shortly",
                        retry_after_s=1,
                    )
                self.in_flight += 1
                counted = True
                self.metrics.in_flight.inc()
            with scope:
                yield
        except RatatoskrError as err:
            code = err.code
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = "DEADLINE_EXCEEDED" if ctx.remaining() == 0 else "CANCELLED"
            raise
        except Exception as err:
            code = "INTERNAL"
            log.exception("unhandled error", extra={"request_id": ctx.request_id, "rpc": rpc})
            raise Internal(f"internal error (request id {ctx.request_id}); the gateway's log has details") from err
        finally:
            if counted:
                self.in_flight -= 1
                self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            answered = ctx.answered
            overhead = max(elapsed - answered.upstream_s, 0.0)
            answered.overhead_ms = overhead * 1000
            self.metrics.count(rpc, code, elapsed, transport)
            if limited:  # model calls; the catalogue and admin RPCs are counted above only
                self._model_metrics(rpc, model, code, elapsed, overhead, ctx)
            if tracing is not None:
                tracing.end_request(ctx, code, overhead * 1000)
            if log.isEnabledFor(logging.INFO):  # the line is built only for a log that keeps it
                extra: dict[str, object] = {
                    "request_id": ctx.request_id,
                    "rpc": rpc,
                    "model": clip(model, MAX_LOGGED_CHARS),
                    "status": code,
                    "duration_ms": round(elapsed * 1000, 2),
                    "overhead_ms": round(overhead * 1000, 3),
                }
                extra.update(trace_ids(ctx))
                if answered.provider:
                    extra["provider"] = answered.provider
                if answered.input_tokens or answered.output_tokens:
                    extra["input_tokens"] = answered.input_tokens
                    extra["output_tokens"] = answered.output_tokens
                if ctx.caller:
                    extra["caller"] = ctx.caller
                notes = ctx.notes
                if notes.dropped_parameters:
                    extra["dropped_parameters"] = ",".join(notes.dropped_parameters)
                if notes.truncation is not None:
                    extra["truncated"] = notes.truncation.summary()
                if notes.budget_warning:
                    extra["budget_warning"] = notes.budget_warning
                if notes.cache_hits:
                    extra["cache_hits"] = notes.cache_hits
                if notes.retries:
                    extra["retries"] = notes.retries
                if notes.failed_over:
                    extra["failed_over"] = ",".join(notes.failed_over)
                if notes.spilled_from:
                    extra["spilled_from"] = notes.spilled_from
                log.info("request", extra=extra)

    def _model_metrics(
        self, rpc: str, model: str, code: str, elapsed: float, overhead: float, ctx: RequestContext
    ) -> None:
        answered = ctx.answered
        first = answered.first_event_ms / 1000 if answered.first_event_ms is not None else None
        self.metrics.call(rpc, model, answered.provider, code, elapsed, overhead, first)
        if answered.input_tokens:
            metrics = self.metrics
            metrics.child(metrics.input_tokens, metrics.model_label(model)).inc(answered.input_tokens)
        if answered.output_tokens:
            self.metrics.tokens(model, answered.output_tokens, answered.inference_ms / 1000)

    async def stream(
        self, rpc: str, ctx: RequestContext, events: AsyncIterator[T], *, model: str = "", transport: str = "grpc"
    ) -> AsyncIterator[T]:
        """Relay a stream under the limits; a failure after the first event still fails the request.

        Nothing is buffered: each event is pulled only after the consumer took the previous one, so a
        slow consumer slows the upstream read, and closing this generator closes the source at once.
        With tracing on, the request's span is current only while the source works for an event.
        """
        tracing = self.tracing
        async with self.admit(rpc, ctx, model=model, attach=False, transport=transport), aclosing(events):  # type: ignore[type-var]
            if tracing is None:
                async for item in events:
                    yield item
                return
            iterator = aiter(events)
            while True:
                with tracing.attached(ctx.span):
                    try:
                        item = await anext(iterator)
                    except StopAsyncIteration:
                        return
                yield item
