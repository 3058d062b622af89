"""What the local pool and its batchers report: load times, memory, queue depth, batches, spans.

The pool and batchers hold one of these (or None, in tests that build a bare pool) and call it at
the moments that matter; what becomes a metric and what a span is decided here, so ``local/`` knows
nothing of Prometheus or OpenTelemetry.  With tracing off the span methods hand back a shared null
context: the cost is one attribute check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from opentelemetry.trace import SpanContext

from ratatoskr_server.telemetry.metrics import Metrics
from ratatoskr_server.telemetry.tracing import Tracing

_NOTHING: contextlib.nullcontext[Any] = contextlib.nullcontext()


class PoolTelemetry:
    def __init__(self, metrics: Metrics, tracing: Tracing | None = None) -> None:
        self.metrics = metrics
        self.tracing = tracing if tracing is not None and tracing.enabled else None

    # -- spans -----------------------------------------------------------------------------------
    def admission(self, model: str) -> contextlib.AbstractContextManager[Any]:
        """A request waiting for its model: admitted at once, or behind a load or an eviction."""
        if self.tracing is None:
            return _NOTHING
        return self.tracing.span("pool admission", {"ratatoskr.model": model})

    def load(self, model: str, device: str) -> contextlib.AbstractContextManager[Any]:
        if self.tracing is None:
            return _NOTHING
        return self.tracing.span("model load", {"ratatoskr.model": model, "ratatoskr.device": device})

    def link(self) -> SpanContext | None:
        """The submitting request's span, for the batch it rides in to link to."""
        return self.tracing.current_link() if self.tracing is not None else None

    def batch(
        self, model: str, rows: int, tokens: int, links: Sequence[SpanContext | None]
    ) -> contextlib.AbstractContextManager[Any]:
        """One inference batch: its size in metrics, and a span linked to every request in it."""
        metrics = self.metrics
        label = metrics.model_label(model)
        metrics.child(metrics.batch_size, label).observe(rows)
        metrics.child(metrics.batch_tokens, label).observe(tokens)
        if self.tracing is None:
            return _NOTHING
        unique = list({(link.trace_id, link.span_id): link for link in links if link is not None}.values())
        attributes = {"ratatoskr.model": model, "ratatoskr.batch.size": rows, "ratatoskr.batch.tokens": tokens}
        return self.tracing.linked_span(f"batch {model}", unique, attributes)

    # -- gauges and histograms -------------------------------------------------------------------
    def queue_depth(self, model: str, requests: int) -> None:
        self.metrics.child(self.metrics.queue_depth, self.metrics.model_label(model)).set(requests)

    def loaded(self, model: str, seconds: float) -> None:
        self.metrics.model_load.labels(model=self.metrics.model_label(model)).observe(seconds)

    def held(self, models: int, used_mb: float, budget_mb: float) -> None:
        """The pool as it stands after a load or an unload."""
        self.metrics.models_loaded.set(models)
        self.metrics.pool_memory.set(used_mb)
        self.metrics.pool_memory_budget.set(budget_mb)
