"""Prometheus metrics on their own registry and port, never on the gRPC port.

A private registry (not prometheus_client's global one) lets an embedded
gateway and a daemon live in one process, as they do in tests, without
colliding metric names.

The catalogue is kept in blocks, one per concern (requests, tokens and cost, budget, cache,
resilience, pool, batching); a new metric joins its block, a new concern adds a block.  Label
values are bounded: model labels only for models the configuration or the catalogue knows
(``model_filter``), anything else counts as "other".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

#: Distinct model names kept as label values; later ones count under "other".  Model names come
#: from callers (remote ``provider/anything``), and every label value is a time series forever.
MAX_MODEL_LABELS = 200
#: How long a name ``model_filter`` refused stays "other" without asking it again (it runs the
#: registry's match, a measurable part of a call's cost); the configuration, the catalogue or the
#: pool may come to know the name later, and a reload forgets at once (``forget_unknown``).
UNKNOWN_TTL_S = 60.0
#: Refused names remembered; past this the memory starts over (callers choose remote names).
MAX_UNKNOWN = 4096
M = TypeVar("M", bound=MetricWrapperBase)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: The gateway's own time per call: sub-millisecond is the norm, so the buckets start small.
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_TPS_BUCKETS = (1, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 20000)
_LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_BATCH_TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)


class _Muted:
    """A labelled child that records nothing: what ``Metrics.child`` hands out when metrics are off."""

    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        return None

    def dec(self, amount: float = 1) -> None:
        return None

    def set(self, value: float) -> None:
        return None

    def observe(self, amount: float) -> None:
        return None


_MUTED = _Muted()


class Metrics:
    def __init__(self, clock: Callable[[], float] = time.monotonic, *, enabled: bool = True) -> None:
        self.registry = CollectorRegistry()
        self._clock = clock
        #: Off (``metrics.enabled = false``: nothing serves them), what goes through ``child`` (every
        #: per-call metric but the in-flight gauge) records nothing: a call does not pay for numbers
        #: nobody can read.
        self.enabled = enabled
        #: Which model names get a label of their own (configured or catalogued ones; set by the
        #: gateway that knows them); None: the first MAX_MODEL_LABELS names seen.
        self.model_filter: Callable[[str], bool] | None = None
        # -- requests --------------------------------------------------------------------------
        self.requests = Counter(
            "ratatoskr_requests",
            "RPCs answered, by method, gRPC status code and transport (grpc, http, embedded).",
            ["rpc", "code", "transport"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ratatoskr_request_duration_seconds",
            "Time to answer an RPC, by method and transport (grpc, http, embedded).",
            ["rpc", "transport"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("ratatoskr_in_flight_requests", "Model calls being served now.", registry=self.registry)
        self.calls = Counter(
            "ratatoskr_model_calls",
            "Model calls answered, by RPC, model (as asked), provider that answered and status code.",
            ["rpc", "model", "provider", "code"],
            registry=self.registry,
        )
        self.call_latency = Histogram(
            "ratatoskr_model_call_duration_seconds",
            "Time to answer a model call (a stream: to its end), by RPC and model.",
            ["rpc", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "ratatoskr_time_to_first_token_seconds",
            "Time from a streamed call's arrival to its first event, by model.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.overhead = Histogram(
            "ratatoskr_gateway_overhead_seconds",
            "The gateway's own time per call: total minus the time spent waiting on the model or upstream.",
            ["rpc"],
            buckets=_OVERHEAD_BUCKETS,
            registry=self.registry,
        )
        # -- tokens and cost -------------------------------------------------------------------
        self.embedded_inputs = Counter(
            "ratatoskr_embedded_inputs", "Texts embedded, by model.", ["model"], registry=self.registry
        )
        self.input_tokens = Counter(
            "ratatoskr_input_tokens", "Tokens read by models, by model.", ["model"], registry=self.registry
        )
        self.output_tokens = Counter(
            "ratatoskr_output_tokens", "Tokens written by models, by model.", ["model"], registry=self.registry
        )
        self.output_tokens_per_second = Histogram(
            "ratatoskr_output_tokens_per_second",
            "Output tokens per second of inference time, per call, by model.",
            ["model"],
            buckets=_TPS_BUCKETS,
            registry=self.registry,
        )
        self.cost = Counter(
            "ratatoskr_cost_usd",
            "USD spent on remote calls (what a budget charged, else reported tokens at the model's price), "
            "by provider and model.",
            ["provider", "model"],
            registry=self.registry,
        )
        # -- budget ----------------------------------------------------------------------------
        self.budget_remaining = Gauge(
            "ratatoskr_budget_remaining_usd",
            "USD left in a budget's current window (limit minus spent and held), as of its last call.",
            ["scope", "window"],
            registry=self.registry,
        )
        self.budget_warnings = Counter(
            "ratatoskr_budget_warnings",
            "Calls that brought a budget to or past budget.warn_at, by scope.",
            ["scope"],
            registry=self.registry,
        )
        self.budget_refusals = Counter(
            "ratatoskr_budget_refusals",
            "Calls refused because their reservation would pass a budget, by scope.",
            ["scope"],
            registry=self.registry,
        )
        # -- response cache --------------------------------------------------------------------
        self.cache_hits = Counter(
            "ratatoskr_cache_hits",
            "Items (inputs, pairs, answers) served from the response cache, by task.",
            ["task"],
            registry=self.registry,
        )
        self.cache_misses = Counter(
            "ratatoskr_cache_misses",
            "Cacheable items the response cache did not hold (computed, then kept when allowed), by task.",
            ["task"],
            registry=self.registry,
        )
        # -- resilience ------------------------------------------------------------------------
        self.retries = Counter(
            "ratatoskr_retries",
            "Upstream calls tried again after a transient failure, by provider.",
            ["provider"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "ratatoskr_fallbacks",
            "Calls a route moved past a candidate, by the provider left.",
            ["provider"],
            registry=self.registry,
        )
        self.breaker_state = Gauge(
            "ratatoskr_breaker_state",
            "Circuit breaker per provider/model: 0 closed, 1 half-open, 2 open.",
            ["target"],
            registry=self.registry,
        )
        self.breaker_opens = Counter(
            "ratatoskr_breaker_opens",
            "Times a circuit breaker opened, by provider/model.",
            ["target"],
            registry=self.registry,
        )
        # -- local pool ------------------------------------------------------------------------
        self.models_loaded = Gauge(
            "ratatoskr_pool_models_loaded", "Local models loaded and ready.", registry=self.registry
        )
        self.pool_memory = Gauge(
            "ratatoskr_pool_memory_mb",
            "Megabytes held by loaded models against local.memory_budget_mb (file footprints).",
            registry=self.registry,
        )
        self.pool_memory_budget = Gauge(
            "ratatoskr_pool_memory_budget_mb", "local.memory_budget_mb (0: no budget).", registry=self.registry
        )
        self.model_load = Histogram(
            "ratatoskr_model_load_seconds",
            "Time to load a local model (session, tokenizer, revision), by model.",
            ["model"],
            buckets=_LOAD_BUCKETS,
            registry=self.registry,
        )
        # -- batching ----------------------------------------------------------------------------
        self.queue_depth = Gauge(
            "ratatoskr_queue_depth",
            "Requests waiting for a local model's next batch, by model.",
            ["model"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "ratatoskr_batch_size",
            "Rows per local inference batch, by model.",
            ["model"],
            buckets=_BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_tokens = Histogram(
            "ratatoskr_batch_tokens",
            "Padded tokens per local inference batch (rows times the widest), by model.",
            ["model"],
            buckets=_BATCH_TOKEN_BUCKETS,
            registry=self.registry,
        )
        # -- shared state (state.backend = "redis"): whether it is reachable, what its absence cost --
        self.state_up = Gauge(
            "ratatoskr_state_backend_up",
            "1 while the shared state backend (Redis) answers, 0 while it is unreachable.",
            registry=self.registry,
        )
        self.state_failures = Counter(
            "ratatoskr_state_backend_failures",
            "Shared-state operations that failed or were skipped because Redis was unreachable, by store "
            "(budget: refused or let through per state.budget_when_unavailable; rates: refused; cache: missed).",
            ["store"],
            registry=self.registry,
        )
        # -- spillover and bulkheads (issue 12) --
        self.spills = Counter(
            "ratatoskr_spills",
            "Calls a local-first route sent past its local candidate because its queue reached spill_at, "
            "by the local provider.",
            ["provider"],
            registry=self.registry,
        )
        self.bulkhead_refusals = Counter(
            "ratatoskr_bulkhead_refusals",
            "Calls refused because a bulkhead (local, providers.NAME) was at its max_in_flight.",
            ["bulkhead"],
            registry=self.registry,
        )
        self._server: WSGIServer | None = None
        self._models: set[str] = set()
        #: Refused names and until when (``clock``) they count as "other" without asking again.
        self._unknown: dict[str, float] = {}
        #: Labelled children of the per-call metrics, by metric and label values (see ``child``).
        self._children: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}

    def count(self, rpc: str, code: str, seconds: float, transport: str = "grpc") -> None:
        """One answered RPC.

        ``transport`` tells the fronts apart: the HTTP front counts under the gRPC method its route
        stands for, so without it an HTTP chat and a gRPC chat would be one series."""
        self.child(self.requests, rpc, code, transport).inc()
        self.child(self.latency, rpc, transport).observe(seconds)

    def model_label(self, model: str) -> str:
        """``model`` as a label value: "other" for names ``model_filter`` does not know, and once
        MAX_MODEL_LABELS names are in use."""
        if model in self._models:
            return model
        until = self._unknown.get(model)
        if until is not None and until > self._clock():
            return "other"
        if len(self._models) >= MAX_MODEL_LABELS:
            return "other"
        if self.model_filter is not None and not self.model_filter(model):
            if len(self._unknown) >= MAX_UNKNOWN:
                self._unknown.clear()
            self._unknown[model] = self._clock() + UNKNOWN_TTL_S
            return "other"
        self._models.add(model)
        return model

    def forget_unknown(self) -> None:
        """Ask ``model_filter`` again about every name it refused (the configuration changed)."""
        self._unknown.clear()

    def child(self, metric: M, *values: str) -> M:
        """``metric.labels(*values)`` (values in the order of its label names), kept: ``labels()``
        takes a lock and builds its key on every call, a few microseconds each, several per call.
        Only for label values that are bounded already (model labels, rpc names, providers)."""
        if not self.enabled:
            return _MUTED  # type: ignore[return-value]  # records nothing, whatever the metric's kind
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found  # type: ignore[return-value]  # labels() returns a child of the same type

    def call(
        self,
        rpc: str,
        model: str,
        provider: str,
        code: str,
        seconds: float,
        overhead_s: float,
        first_event_s: float | None,
    ) -> None:
        """One model call answered (or failed): counts, latency, time to first event and overhead."""
        label = self.model_label(model)
        self.child(self.calls, rpc, label, provider, code).inc()
        self.child(self.call_latency, rpc, label).observe(seconds)
        self.child(self.overhead, rpc).observe(max(overhead_s, 0.0))
        if first_event_s is not None:
            self.child(self.time_to_first_token, label).observe(first_event_s)

    def tokens(self, model: str, output_tokens: int, inference_s: float) -> None:
        """Tokens a call's answer wrote, and how fast."""
        label = self.model_label(model)
        self.child(self.output_tokens, label).inc(output_tokens)
        if inference_s > 0:
            self.child(self.output_tokens_per_second, label).observe(output_tokens / inference_s)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; returns the bound port (useful when ``port`` is 0)."""
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
