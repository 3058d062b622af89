"""Prometheus metrics on their own registry and port, never on the gRPC port.

A private registry (not prometheus_client's global one) lets an embedded
gateway and a daemon live in one process, as they do in tests, without
colliding metric names.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: Distinct model names kept as label values; later ones count under "other".  Model names come
#: from callers (remote ``provider/anything``), and every label value is a time series forever.
MAX_MODEL_LABELS = 200
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ratatoskr_requests",
            "RPCs answered, by method and gRPC status code.",
            ["rpc", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ratatoskr_request_duration_seconds",
            "Time to answer an RPC, by method.",
            ["rpc"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("ratatoskr_in_flight_requests", "Model calls being served now.", registry=self.registry)
        self.embedded_inputs = Counter(
            "ratatoskr_embedded_inputs", "Texts embedded, by model.", ["model"], registry=self.registry
        )
        self.input_tokens = Counter(
            "ratatoskr_input_tokens", "Tokens read by models, by model.", ["model"], registry=self.registry
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
        self._requests: dict[tuple[str, str], Counter] = {}
        self._latency: dict[str, Histogram] = {}
        self._server: WSGIServer | None = None
        self._models: set[str] = set()

    def count(self, rpc: str, code: str, seconds: float) -> None:
        """One answered RPC; the labelled children are kept, as ``labels()`` costs a lock and a lookup."""
        key = (rpc, code)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(rpc=rpc, code=code)
        latency = self._latency.get(rpc)
        if latency is None:
            latency = self._latency[rpc] = self.latency.labels(rpc=rpc)
        child.inc()
        latency.observe(seconds)

    def model_label(self, model: str) -> str:
        """``model`` as a label value, or "other" once MAX_MODEL_LABELS names are in use."""
        if model in self._models:
            return model
        if len(self._models) >= MAX_MODEL_LABELS:
            return "other"
        self._models.add(model)
        return model

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; returns the bound port (useful when ``port`` is 0)."""
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
