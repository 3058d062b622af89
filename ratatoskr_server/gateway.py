"""The façade every way in calls: one method per task, each building a ``Call`` and running the pipeline.

It holds no policy of its own.  The stages decide (limits → presets → plan → parameters → the chat
template of completion-only models), the providers answer (HTTP adapters, or the local pool through
``providers/local.py``), and the edge around each call (``edge.py``) keeps the limits, log line and
metrics; the catalogue and the administration of the pool live in ``catalog.py`` and ``admin.py``.
Everything it uses is passed in; ``from_settings`` builds the usual set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from ratatoskr_client.errors import InvalidArgument
from ratatoskr_client.types import (
    BudgetStatus,
    ChatEvent,
    ChatOptions,
    ChatResult,
    ClassifyResult,
    CountTokensResult,
    Done,
    EmbedResult,
    GenerateResult,
    Message,
    ModelMetadata,
    NliResult,
    PrivacyTier,
    RenderedPrompt,
    Task,
    Timing,
    TokenizeResult,
)
from ratatoskr_server.admin import Admin
from ratatoskr_server.catalog import Catalog
from ratatoskr_server.config import Settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.local.discovery import local_models
from ratatoskr_server.local.parts import LocalParts
from ratatoskr_server.local.pool import LocalModelPool
from ratatoskr_server.net.egress import EgressPolicy, Resolver
from ratatoskr_server.pipeline.call import (
    Call,
    Candidate,
    ChatInput,
    ClassifyInput,
    EmbedInput,
    GenerateInput,
    NliInput,
    Result,
    expect,
)
from ratatoskr_server.pipeline.chain import Chain
from ratatoskr_server.pipeline.dispatch import Dispatch
from ratatoskr_server.policy.budget.meter import CostMeterStage
from ratatoskr_server.policy.budget.report import budget_report
from ratatoskr_server.policy.budget.stage import BudgetStage
from ratatoskr_server.policy.budget.windows import utc_now
from ratatoskr_server.policy.cache.stage import CacheStage
from ratatoskr_server.policy.context import ContextStage
from ratatoskr_server.policy.limits import LimitsStage
from ratatoskr_server.policy.params import ParameterGuard, ParamsStage
from ratatoskr_server.policy.presets import PresetStage
from ratatoskr_server.policy.privacy import PrivacyStage
from ratatoskr_server.policy.templates.render import TemplateRenderer, estimate_messages
from ratatoskr_server.policy.templates.stage import TemplateStage
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.providers.local import LocalProvider
from ratatoskr_server.registry import ModelRegistry, RefreshReport
from ratatoskr_server.registry.cache import load_live
from ratatoskr_server.registry.cache import update as update_registry
from ratatoskr_server.routing.breaker import Breakers, BreakerStage
from ratatoskr_server.routing.bulkhead import Bulkheads, BulkheadStage
from ratatoskr_server.routing.failover import StreamFailover
from ratatoskr_server.routing.fallback import FallbackStage
from ratatoskr_server.routing.plan import PlanStage
from ratatoskr_server.routing.retry import RetryStage, Sleep
from ratatoskr_server.routing.router import Router
from ratatoskr_server.routing.spillover import QueueDepth, SpilloverStage
from ratatoskr_server.state.breakers import BreakerStore, MemoryBreakers, Phase
from ratatoskr_server.state.budget import BudgetLedger
from ratatoskr_server.state.cache import MemoryResponseCache, ResponseCache
from ratatoskr_server.state.factory import SharedState, budget_ledger, shared_state
from ratatoskr_server.telemetry.metrics import Metrics
from ratatoskr_server.telemetry.pool import PoolTelemetry
from ratatoskr_server.telemetry.tracing import Tracing

log = logging.getLogger(__name__)

#: Texts counted in one request above which tokenizing moves off the event loop.
_INLINE_COUNT_MAX = 16


R = TypeVar("R", EmbedResult, NliResult, ClassifyResult, ChatResult, GenerateResult)


def _noted(result: R, ctx: RequestContext) -> R:
    """``result`` carrying the request's notes (a copy only when there are any)."""
    notes = ctx.notes
    return replace(result, notes=notes) if notes else result


@dataclass(frozen=True, slots=True)
class _Routing:
    """One configuration's pipeline: its settings, router and the chain built on them.

    Swapped whole on reload and taken once per call, so a call runs start to end on the
    configuration it began with while the next call already sees the new one.
    """

    settings: Settings
    router: Router
    chain: Chain
    templates: TemplateRenderer


class Gateway:
    def __init__(
        self,
        settings: Settings,
        *,
        pool: LocalModelPool,
        registry: ModelRegistry,
        metrics: Metrics,
        executor: Executor,
        owned_executors: Sequence[ThreadPoolExecutor] = (),
        ledger: BudgetLedger | None = None,
        cache: ResponseCache | None = None,
        clock: Callable[[], datetime] = utc_now,
        resolver: Resolver | None = None,
        breakers: BreakerStore | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        shared: SharedState | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        #: Spans of the stages, the pool, batches and upstream calls; off unless [tracing] enabled.
        self.tracing = tracing or Tracing.off()
        #: The Redis stores every replica shares (``state.backend = "redis"``): they stand in for the
        #: ledger, cache and breaker store not passed explicitly.
        self.shared = shared
        if shared is not None:
            ledger = ledger or shared.ledger
            cache = cache or shared.cache
            breakers = breakers or shared.verdicts
        #: Circuit breaker state, kept across reloads (an upstream's failures outlive a config edit).
        self.breakers = breakers or MemoryBreakers()
        #: The clock breakers measure windows and cooldowns on, and how retries wait (tests inject both).
        self.monotonic = monotonic
        self.sleep = sleep
        #: How hostnames become addresses for the egress guard (tests inject one; None: the system's).
        self.resolver = resolver
        self.pool = pool
        self.registry = registry
        self.metrics = metrics
        # Model labels only for names the configuration or the catalogue knows.
        metrics.model_filter = self.known_model
        pool.telemetry = PoolTelemetry(metrics, self.tracing)
        self._executor = executor
        self._owned = tuple(owned_executors)
        self.local = LocalProvider(pool)
        self.params = ParameterGuard(settings)
        if shared is not None:
            self.params.shared = shared.verdicts
            shared.verdicts.target = self.params
        self.admin = Admin(pool)
        #: The budget ledger, made when a budget is first configured and kept across reloads.
        self.ledger = ledger
        #: The response cache's store, made when the cache is first enabled and kept across reloads.
        self.cache = cache
        self.clock = clock
        #: Concurrency limits of the local pool and each provider, kept across reloads (their counts are calls).
        self.bulkheads = Bulkheads(settings)
        self._routing = self._build(settings)
        self.catalog = Catalog(
            lambda: self.settings,
            lambda: self._routing.router,
            pool,
            registry,
            self.params,
            lambda: {key: phase.value for key, phase in self.breaker_phases().items()},
        )
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        metrics: Metrics | None = None,
        resolver: Resolver | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
        cache: ResponseCache | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        tracing: Tracing | None = None,
        local: LocalParts | None = None,
    ) -> Gateway:
        """The usual parts: an inference executor, a separate loader executor, the pool, the registry,
        and the Redis stores when ``state.backend = "redis"``; ``local``: executors and pool built already
        (the daemon's, loading its preload models early; see local/parts.py)."""
        metrics = metrics or Metrics(enabled=settings.metrics.enabled)
        local = local or LocalParts.from_settings(settings)
        registry = ModelRegistry.embedded()
        load_live(registry, settings.registry.cache_file.expanduser())
        return cls(
            settings,
            pool=local.pool,
            registry=registry,
            metrics=metrics,
            executor=local.executor,
            owned_executors=(local.executor, local.loader),
            clock=clock,
            resolver=resolver,
            cache=cache,
            monotonic=monotonic,
            sleep=sleep,
            shared=shared_state(settings, metrics, monotonic=monotonic),
            tracing=tracing,
        )

    def _build(self, settings: Settings) -> _Routing:
        egress = EgressPolicy.from_settings(settings, self.resolver)
        router = Router(settings, self.local, egress, self.tracing)
        breakers = Breakers(settings.resilience.breaker, self.breakers, self.monotonic, self.metrics)
        # The renderer resolves names with this configuration's router, not whichever is current.
        templates = TemplateRenderer(
            settings.templates,
            lambda name: self._local_folder(router, settings, name),
            lambda name: self._family(router, name),
        )
        stages = [
            LimitsStage(settings.limits),
            PresetStage(settings.presets),
            PlanStage(router),
            PrivacyStage(egress),
            SpilloverStage(settings.routes, QueueDepth(self.pool, self.bulkheads), breakers, self.metrics),
            FallbackStage(breakers, self.metrics, StreamFailover(settings.failover)),
            ParamsStage(self.params.under(settings), self.registry),
            ContextStage(settings.context, self.registry, templates),
            # After the stages that make the request final (its key), before budget (a hit spends nothing).
            *self._cache(settings),
            CostMeterStage(settings.budget.prices, self.registry, self.metrics),
            *self._budget(settings, templates),
            TemplateStage(settings.providers, templates, settings.limits.max_stop_sequences),
            BulkheadStage(self.bulkheads, self.metrics),
            RetryStage(settings.resilience, sleep=self.sleep, metrics=self.metrics),
            BreakerStage(breakers),
        ]
        return _Routing(
            settings, router, Chain(stages, Dispatch(settings.http.total_timeout_s), self.tracing), templates
        )

    def _cache(self, settings: Settings) -> list[CacheStage]:
        """The response cache stage when enabled; its store is made on first need and kept across reloads."""
        if not settings.cache.enabled:
            return []
        if self.cache is None:
            self.cache = MemoryResponseCache(
                ttl_s=settings.cache.ttl_s, max_bytes=int(settings.cache.max_mb * 1024 * 1024)
            )
        return [CacheStage(settings.cache, self.cache, self.metrics, self._revision)]

    def _revision(self, target: Candidate) -> str:
        """A local model's file revision (a swapped model must not answer from old entries); remote
        models are known by name only."""
        return self.pool.revision(target.model) if isinstance(target.provider, LocalProvider) else ""

    def _budget(self, settings: Settings, templates: TemplateRenderer) -> list[BudgetStage]:
        """The budget stage when any budget is configured (its ledger opened on first need)."""
        if not settings.budget.enabled():
            return []
        if self.ledger is None:
            self.ledger = budget_ledger(settings.budget)
        return [
            BudgetStage(
                settings.budget,
                settings.context.output_reserve_tokens,
                self.registry,
                templates,
                self.ledger,
                self.metrics,
                self.clock,
            )
        ]

    def bulkhead_occupancy(self) -> dict[str, tuple[int, int]]:
        """(in flight, limit) per bulkhead ("local", "providers.NAME"), for status."""
        return self.bulkheads.occupancy()

    def breaker_phases(self) -> dict[str, Phase]:
        """Each provider/model's circuit breaker, for status, ListModels and tests."""
        return Breakers(self.settings.resilience.breaker, self.breakers, self.monotonic).phases()

    def known_model(self, name: str) -> bool:
        """A model name the configuration or the catalogue knows (a metric label of its own)."""
        settings = self.settings
        local = settings.local
        if name in settings.models or name in settings.aliases or name in settings.routes or name in settings.presets:
            return True
        if name in (local.default_embed_model, local.default_nli_model, local.default_classify_model):
            return True
        if name in settings.aliases.values() or any(name in r.candidates for r in settings.routes.values()):
            return True
        if any(name == p.model for p in settings.presets.values()):
            return True
        if name in self.pool.load_counts:
            return True
        found = self._routing.router.split(name)
        if found is not None:
            provider, model = found
            entry = settings.providers.get(provider)
            return (entry is not None and model in entry.models) or self.registry.lookup(provider, model) is not None
        return self.registry.match_embedded(name) is not None

    @property
    def settings(self) -> Settings:
        """The configuration new calls start on."""
        return self._routing.settings

    @property
    def templates(self) -> TemplateRenderer:
        return self._routing.templates

    @property
    def router(self) -> Router:
        return self._routing.router

    def default_model(self, task: str) -> str:
        local = self.settings.local
        return {
            "embed": local.default_embed_model,
            "nli": local.default_nli_model,
            "classify": local.default_classify_model,
        }.get(task, "")

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the models named in ``local.preload``; the daemon reports SERVING after this."""
        self.pool.start()
        if self.shared is not None:
            self.shared.start()
        if self.settings.registry.refresh_at_start:
            # In the background: a slow or unreachable catalogue must not hold SERVING back.
            task = asyncio.get_running_loop().create_task(self._refresh_in_background())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        for name in self.settings.local.preload:
            await self.admin.load_model(name)

    async def _refresh_in_background(self) -> None:
        try:
            report = await self.refresh_registry()
        except Exception:
            log.exception("registry refresh at start failed; the shipped catalogue stays in use")
            return
        for source in report.sources:
            if not source.ok:
                log.warning("registry source failed at start", extra={"source": source.name, "error": source.error})

    async def refresh_registry(self) -> RefreshReport:
        """Live metadata from OpenRouter and every enabled Ollama provider; failures keep the old data."""
        return await update_registry(self.registry, self.settings, self._routing.router.egress)

    async def apply_settings(self, settings: Settings) -> list[str]:
        """Take reloadable settings (limits, declarations, providers); executor sizes need a restart.

        Returns what loaded models take only when next loaded.
        """
        return self.commit(await self.prepare(settings))

    async def prepare(self, settings: Settings) -> _Routing:
        """Build the pipeline ``settings`` ask for without serving it: anything that fails here (a
        provider that cannot be built, an unreadable file) leaves the running configuration as it is."""
        prepared = self._build(settings)
        # File IO and validating a few thousand records: off the event loop.
        await asyncio.to_thread(load_live, self.registry, settings.registry.cache_file.expanduser())
        return prepared

    def commit(self, prepared: _Routing) -> list[str]:
        """Serve ``prepared`` from the next call on, in one step with nothing awaited in between.

        Calls already running keep the pipeline they took (its router closes its connections when
        the last of them ends).  Returns what loaded models take only when next loaded.
        """
        old = self._routing
        self.bulkheads.configure(prepared.settings)
        self._routing = prepared
        self.metrics.forget_unknown()  # names the new configuration knows get labels of their own
        self.params.settings = prepared.settings
        awaiting = self.pool.update_settings(prepared.settings)
        old.router.retire()
        return awaiting

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self._routing.router.aclose()
        if self.ledger is not None:
            await self.ledger.close()
        if self.shared is not None:
            await self.shared.close()
        await self.pool.close()
        for executor in self._owned:
            executor.shutdown(wait=False, cancel_futures=True)
        # What is queued for export goes out now (bounded by tracing.export_timeout_s), off the loop.
        await asyncio.to_thread(self.tracing.shutdown)

    # -- model calls -------------------------------------------------------------------------------
    async def _run(self, call: Call, ctx: RequestContext) -> Result:
        routing = self._routing
        with routing.router.lease():
            return await routing.chain.run(call, ctx)

    async def _stream(self, call: Call, ctx: RequestContext) -> AsyncIterator[ChatEvent]:
        """The chain's events, the router leased until the stream ends and notes on the final Done."""
        routing = self._routing
        with routing.router.lease():
            events = routing.chain.stream(call, ctx)
            async with aclosing(events):  # type: ignore[type-var]
                async for event in events:
                    yield replace(event, notes=ctx.notes) if isinstance(event, Done) else event

    async def embed(
        self, ctx: RequestContext, inputs: Sequence[str], *, model: str = "", truncate: bool = True
    ) -> EmbedResult:
        call = Call(Capability.EMBED, model or self.settings.local.default_embed_model, EmbedInput(inputs, truncate))
        result = expect(await self._run(call, ctx), EmbedResult)
        label = self.metrics.model_label(result.model)
        self.metrics.child(self.metrics.embedded_inputs, label).inc(len(inputs))
        return _noted(result, ctx)

    async def nli(
        self, ctx: RequestContext, pairs: Sequence[tuple[str, str]], *, model: str = "", truncate: bool = True
    ) -> NliResult:
        call = Call(Capability.NLI, model or self.settings.local.default_nli_model, NliInput(pairs, truncate))
        if not call.model:
            raise InvalidArgument("no model given and no default NLI model is configured (local.default_nli_model)")
        return _noted(expect(await self._run(call, ctx), NliResult), ctx)

    async def classify(
        self,
        ctx: RequestContext,
        text: str,
        labels: Sequence[str],
        *,
        model: str = "",
        multi_label: bool = False,
        hypothesis_template: str = "",
    ) -> ClassifyResult:
        """Zero-shot: NLI strategy for cross-encoders, embedding strategy for embedding models."""
        payload = ClassifyInput(text, labels, multi_label, hypothesis_template)
        call = Call(Capability.CLASSIFY, model or self.settings.local.default_classify_model, payload)
        return _noted(expect(await self._run(call, ctx), ClassifyResult), ctx)

    async def chat(
        self, ctx: RequestContext, messages: Sequence[Message], options: ChatOptions | None = None
    ) -> ChatResult:
        options = options or ChatOptions()
        call = Call(Capability.CHAT, options.model, ChatInput(messages), options)
        return _noted(expect(await self._run(call, ctx), ChatResult), ctx)

    def chat_stream(
        self, ctx: RequestContext, messages: Sequence[Message], options: ChatOptions | None = None
    ) -> AsyncIterator[ChatEvent]:
        options = options or ChatOptions()
        return self._stream(Call(Capability.CHAT, options.model, ChatInput(messages), options), ctx)

    async def generate(self, ctx: RequestContext, prompt: str, options: ChatOptions | None = None) -> GenerateResult:
        options = options or ChatOptions()
        call = Call(Capability.GENERATE, options.model, GenerateInput(prompt), options)
        return _noted(expect(await self._run(call, ctx), GenerateResult), ctx)

    def generate_stream(
        self, ctx: RequestContext, prompt: str, options: ChatOptions | None = None
    ) -> AsyncIterator[ChatEvent]:
        options = options or ChatOptions()
        return self._stream(Call(Capability.GENERATE, options.model, GenerateInput(prompt), options), ctx)

    # -- tokenizers --------------------------------------------------------------------------------
    async def tokenize(
        self, ctx: RequestContext, text: str, *, model: str = "", add_special_tokens: bool = True
    ) -> TokenizeResult:
        r = self._routing
        LimitsStage(r.settings.limits).texts([text], "text", "text")
        name = r.router.target(model or r.settings.local.default_embed_model)
        tokenizer = await self.pool.tokenizer(name)
        tokens = tokenizer.tokens(text, add_special_tokens=add_special_tokens)
        elapsed = ctx.elapsed_ms()
        return TokenizeResult(
            tokens=tokens,
            model=tokenizer.model_name,
            timing=Timing(tokenization_ms=elapsed, total_ms=elapsed, input_tokens=len(tokens)),
        )

    def _local_folder(self, router: Router, settings: Settings, name: str) -> Path | None:
        """The folder of the local model ``name`` (``local/NAME`` or ``NAME``) stands for: chat
        templates and vocabularies saved beside it are its own."""
        canonical = self.pool.canonical(router.target(name))
        return None if "/" in canonical else local_models(settings).get(canonical)

    def _family(self, router: Router, name: str) -> str:
        """The registry's tokenizer family for ``name`` (``provider/model`` or a bare name), "" if unknown."""
        found = router.split(name)
        record = self.registry.lookup(*found) if found else self.registry.match_embedded(name)
        return record.tokenizer_family if record else ""

    async def count_tokens(self, ctx: RequestContext, texts: Sequence[str], *, model: str = "") -> CountTokensResult:
        r = self._routing  # one configuration for the whole call, should a reload come meanwhile
        LimitsStage(r.settings.limits).texts(texts, "texts", "text")
        target = r.router.target(model or r.settings.local.default_embed_model)
        if r.router.split(target) is not None or r.templates.sources.configured(model, target) is not None:
            # A provider's model (or one given a template source): its own vocabulary when the
            # source carries one, else an estimate that says so.
            counted = await r.templates.count_texts((model, target), texts)
            elapsed = ctx.elapsed_ms()
            return CountTokensResult(
                counts=counted.counts,
                total=sum(counted.counts),
                model=model or target,
                timing=Timing(tokenization_ms=elapsed, total_ms=elapsed, input_tokens=sum(counted.counts)),
                estimated=counted.estimated,
            )
        tokenizer = await self.pool.tokenizer(target)
        if len(texts) > _INLINE_COUNT_MAX:
            counts = await asyncio.get_running_loop().run_in_executor(self._executor, tokenizer.count, list(texts))
        else:
            counts = tokenizer.count(texts)
        elapsed = ctx.elapsed_ms()
        return CountTokensResult(
            counts=counts,
            total=sum(counts),
            model=tokenizer.model_name,
            timing=Timing(tokenization_ms=elapsed, total_ms=elapsed, input_tokens=sum(counts)),
        )

    async def render_chat_template(
        self, ctx: RequestContext, messages: Sequence[Message], *, model: str, add_generation_prompt: bool = True
    ) -> RenderedPrompt:
        """The prompt the model's chat template makes of ``messages``, and its size."""
        return await self._render(
            self._routing, ctx, messages, model=model, add_generation_prompt=add_generation_prompt
        )

    async def _render(
        self,
        r: _Routing,
        ctx: RequestContext,
        messages: Sequence[Message],
        *,
        model: str,
        add_generation_prompt: bool,
    ) -> RenderedPrompt:
        if not model:
            raise InvalidArgument("no model given: name the model whose chat template to render")
        LimitsStage(r.settings.limits).messages(messages)
        rendered = await r.templates.render(
            (model, r.router.target(model)), messages, add_generation_prompt=add_generation_prompt
        )
        return replace(rendered, timing=Timing(total_ms=ctx.elapsed_ms(), input_tokens=rendered.tokens))

    async def count_message_tokens(
        self, ctx: RequestContext, messages: Sequence[Message], *, model: str
    ) -> CountTokensResult:
        """The tokens of the prompt the model's chat template makes of ``messages`` (its turn opened).

        A model whose template is not known here (a paid API renders its own) gets the estimate the
        context stage uses for it, flagged: a count needs no template, a rendering does.
        """
        if not model:
            raise InvalidArgument("no model given: name the model whose prompt to count")
        r = self._routing
        names = (model, r.router.target(model))
        if await r.templates.sources.lookup(*names) is None:
            LimitsStage(r.settings.limits).messages(messages)
            tokens = estimate_messages(messages)
            elapsed = ctx.elapsed_ms()
            timing = Timing(tokenization_ms=elapsed, total_ms=elapsed, input_tokens=tokens)
            return CountTokensResult(counts=[tokens], total=tokens, model=model, timing=timing, estimated=True)
        rendered = await self._render(r, ctx, messages, model=model, add_generation_prompt=True)
        return CountTokensResult(
            counts=[rendered.tokens],
            total=rendered.tokens,
            model=model,
            timing=replace(rendered.timing, total_ms=ctx.elapsed_ms()),
            estimated=rendered.tokens_estimated,
        )

    # -- budgets -----------------------------------------------------------------------------------
    async def budget(self, scope: str = "") -> list[BudgetStatus]:
        """Every budget in its current window: limit, spent, reserved, window end."""
        return await budget_report(self.settings.budget, self.ledger, self.clock(), scope)

    # -- catalogue ---------------------------------------------------------------------------------
    async def model_metadata(self, model: str) -> ModelMetadata:
        return await self.catalog.model_metadata(model)

    async def list_models(
        self, *, task: Task | None = None, local_only: bool = False, tier: PrivacyTier | None = None
    ) -> list[ModelMetadata]:
        """What callers may use; under a tier stricter than Standard, only what that tier allows
        (``tier`` tightens ``privacy.tier``, as a request's ask does)."""
        return await self.catalog.list_models(task=task, local_only=local_only, tier=tier)
