"""The gateway inside the caller's process, for ``auto()`` when no daemon answers.

It is a front like the gRPC one: each call gets a ``RequestContext`` (its own request id, the
caller's timeout as an absolute deadline) and goes through the same ``Edge`` (in-flight limit, log
line, metrics) and the same pipeline as a daemon's.  Errors reach the caller as the same domain
exceptions the client raises for a daemon's statuses; notes come back in the results.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import TypeVar

from ratatoskr_client.types import (
    ChatEvent,
    ChatOptions,
    ChatResult,
    ClassifyResult,
    CountTokensResult,
    EmbedResult,
    GenerateResult,
    LoadedModel,
    Message,
    ModelMetadata,
    NliResult,
    PrivacyTier,
    RenderedPrompt,
    SwapResult,
    Task,
    TokenizeResult,
)
from ratatoskr_server.config import Settings, load_settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.edge import Edge
from ratatoskr_server.gateway import Gateway
from ratatoskr_server.local.pool import LocalModelPool
from ratatoskr_server.telemetry.metrics import Metrics
from ratatoskr_server.telemetry.tracing import Tracing

T = TypeVar("T")


class EmbeddedGateway:
    """The ``ModelGateway`` interface over an in-process ``Gateway``, through the shared edge."""

    def __init__(
        self,
        settings: Settings,
        *,
        gateway: Gateway | None = None,
        edge: Edge | None = None,
        privacy_tier: PrivacyTier | None = None,
    ) -> None:
        self.gateway = gateway or Gateway.from_settings(settings, tracing=Tracing.from_settings(settings.tracing))
        #: The tier every call of this caller asks for: it can only tighten ``privacy.tier``.
        self.privacy_tier = privacy_tier
        self.edge = edge or Edge(self.gateway.metrics, settings.server.max_in_flight, self.gateway.tracing)

    # -- what tests and tools reach for --------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        return self.gateway.settings

    @property
    def pool(self) -> LocalModelPool:
        return self.gateway.pool

    @property
    def metrics(self) -> Metrics:
        return self.edge.metrics

    async def apply_settings(self, settings: Settings) -> list[str]:
        self.edge.max_in_flight = settings.server.max_in_flight
        return await self.gateway.apply_settings(settings)

    async def start(self) -> None:
        await self.gateway.start()

    # -- the edge --------------------------------------------------------------------------------------
    async def _unary(
        self,
        rpc: str,
        timeout: float | None,
        body: Callable[[RequestContext], Awaitable[T]],
        *,
        model: str = "",
        limited: bool = True,
    ) -> T:
        ctx = RequestContext.start(timeout=timeout)
        ctx.tighten_privacy(self.privacy_tier)
        async with self.edge.admit(rpc, ctx, model=model, limited=limited, transport="embedded"):
            return await body(ctx)
        raise AssertionError("unreachable")  # admit() re-raises every failure

    async def _stream(
        self,
        rpc: str,
        timeout: float | None,
        events: Callable[[RequestContext], AsyncIterator[ChatEvent]],
        model: str,
    ) -> AsyncIterator[ChatEvent]:
        ctx = RequestContext.start(timeout=timeout)
        ctx.tighten_privacy(self.privacy_tier)
        relayed = self.edge.stream(rpc, ctx, events(ctx), model=model, transport="embedded")
        async with aclosing(relayed):  # type: ignore[type-var]
            async for event in relayed:
                yield event

    # -- ModelGateway ----------------------------------------------------------------------------------
    async def embed(
        self, inputs: Sequence[str], *, model: str = "", truncate: bool = True, timeout: float | None = None
    ) -> EmbedResult:
        return await self._unary(
            "Embed",
            timeout,
            lambda ctx: self.gateway.embed(ctx, inputs, model=model, truncate=truncate),
            model=model or self.gateway.default_model("embed"),
        )

    async def nli(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> NliResult:
        return await self._unary(
            "Nli",
            timeout,
            lambda ctx: self.gateway.nli(ctx, pairs, model=model, truncate=truncate),
            model=model or self.gateway.default_model("nli"),
        )

    async def classify(
        self,
        text: str,
        labels: Sequence[str],
        *,
        model: str = "",
        multi_label: bool = False,
        hypothesis_template: str = "",
        timeout: float | None = None,
    ) -> ClassifyResult:
        return await self._unary(
            "Classify",
            timeout,
            lambda ctx: self.gateway.classify(
                ctx, text, labels, model=model, multi_label=multi_label, hypothesis_template=hypothesis_template
            ),
            model=model or self.gateway.default_model("classify"),
        )

    async def tokenize(
        self, text: str, *, model: str = "", add_special_tokens: bool = True, timeout: float | None = None
    ) -> TokenizeResult:
        return await self._unary(
            "Tokenize",
            timeout,
            lambda ctx: self.gateway.tokenize(ctx, text, model=model, add_special_tokens=add_special_tokens),
            model=model,
        )

    async def count_tokens(
        self, texts: Sequence[str], *, model: str = "", timeout: float | None = None
    ) -> CountTokensResult:
        return await self._unary(
            "CountTokens", timeout, lambda ctx: self.gateway.count_tokens(ctx, texts, model=model), model=model
        )

    async def chat(
        self, messages: Sequence[Message], options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> ChatResult:
        model = options.model if options else ""
        return await self._unary("Chat", timeout, lambda ctx: self.gateway.chat(ctx, messages, options), model=model)

    def chat_stream(
        self, messages: Sequence[Message], options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> AsyncIterator[ChatEvent]:
        model = options.model if options else ""
        return self._stream("ChatStream", timeout, lambda ctx: self.gateway.chat_stream(ctx, messages, options), model)

    async def generate(
        self, prompt: str, options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> GenerateResult:
        model = options.model if options else ""
        return await self._unary(
            "Generate", timeout, lambda ctx: self.gateway.generate(ctx, prompt, options), model=model
        )

    def generate_stream(
        self, prompt: str, options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> AsyncIterator[ChatEvent]:
        model = options.model if options else ""
        return self._stream(
            "GenerateStream", timeout, lambda ctx: self.gateway.generate_stream(ctx, prompt, options), model
        )

    async def render_chat_template(
        self,
        messages: Sequence[Message],
        *,
        model: str,
        add_generation_prompt: bool = True,
        timeout: float | None = None,
    ) -> RenderedPrompt:
        return await self._unary(
            "RenderChatTemplate",
            timeout,
            lambda ctx: self.gateway.render_chat_template(
                ctx, messages, model=model, add_generation_prompt=add_generation_prompt
            ),
            model=model,
        )

    async def list_models(self, *, task: Task | None = None, local_only: bool = False) -> list[ModelMetadata]:
        return await self._unary(
            "ListModels",
            None,
            lambda ctx: self.gateway.list_models(task=task, local_only=local_only, tier=ctx.privacy_tier),
            limited=False,
        )

    async def model_metadata(self, model: str) -> ModelMetadata:
        return await self._unary(
            "GetModelMetadata", None, lambda ctx: self.gateway.model_metadata(model), model=model, limited=False
        )

    # -- administration ------------------------------------------------------------------------------
    async def load_model(self, name: str) -> LoadedModel:
        return await self._unary("LoadModel", None, lambda ctx: self.gateway.admin.load_model(name), model=name)

    async def unload_model(self, name: str) -> bool:
        return await self._unary(
            "UnloadModel", None, lambda ctx: self.gateway.admin.unload_model(name), model=name, limited=False
        )

    async def swap_model(self, name: str) -> SwapResult:
        return await self._unary(
            "SwapModel", None, lambda ctx: self.gateway.admin.swap_model(name), model=name, limited=False
        )

    def loaded_models(self) -> list[LoadedModel]:
        return self.gateway.admin.loaded_models()

    async def close(self) -> None:
        await self.gateway.close()


async def open_embedded_gateway(
    config_path: str | os.PathLike[str] | None = None, *, privacy_tier: PrivacyTier | None = None
) -> EmbeddedGateway:
    """Same configuration sources as the daemon; the idle reaper runs, models load on first use."""
    gateway = EmbeddedGateway(load_settings(config_path), privacy_tier=privacy_tier)
    gateway.pool.start()
    return gateway
