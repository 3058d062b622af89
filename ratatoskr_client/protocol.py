"""The interface every way of reaching the gateway implements.

``auto()`` hands back either a gRPC client or an in-process gateway; callers
type against these protocols and never learn which one they got.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Protocol, runtime_checkable

from ratatoskr_client.types import (
    ChatEvent,
    ChatOptions,
    ChatResult,
    ClassifyResult,
    CountTokensResult,
    EmbedResult,
    GenerateResult,
    Message,
    ModelMetadata,
    NliResult,
    RenderedPrompt,
    Task,
    TokenizeResult,
)


@runtime_checkable
class ModelGateway(Protocol):
    """The asyncio face of the gateway."""

    async def embed(
        self,
        inputs: Sequence[str],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> EmbedResult: ...

    async def nli(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> NliResult: ...

    async def classify(
        self,
        text: str,
        labels: Sequence[str],
        *,
        model: str = "",
        multi_label: bool = False,
        hypothesis_template: str = "",
        timeout: float | None = None,
    ) -> ClassifyResult: ...

    async def tokenize(
        self, text: str, *, model: str = "", add_special_tokens: bool = True, timeout: float | None = None
    ) -> TokenizeResult: ...

    async def count_tokens(
        self, texts: Sequence[str], *, model: str = "", timeout: float | None = None
    ) -> CountTokensResult: ...

    async def render_chat_template(
        self,
        messages: Sequence[Message],
        *,
        model: str,
        add_generation_prompt: bool = True,
        timeout: float | None = None,
    ) -> RenderedPrompt: ...

    async def chat(
        self, messages: Sequence[Message], options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> ChatResult: ...

    def chat_stream(
        self, messages: Sequence[Message], options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> AsyncIterator[ChatEvent]: ...

    async def generate(
        self, prompt: str, options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> GenerateResult: ...

    def generate_stream(
        self, prompt: str, options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> AsyncIterator[ChatEvent]: ...

    async def list_models(self, *, task: Task | None = None, local_only: bool = False) -> list[ModelMetadata]: ...

    async def model_metadata(self, model: str) -> ModelMetadata: ...

    async def close(self) -> None: ...


@runtime_checkable
class SyncModelGateway(Protocol):
    """The blocking face of the gateway, for code without an event loop."""

    def embed(
        self,
        inputs: Sequence[str],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> EmbedResult: ...

    def nli(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> NliResult: ...

    def classify(
        self,
        text: str,
        labels: Sequence[str],
        *,
        model: str = "",
        multi_label: bool = False,
        hypothesis_template: str = "",
        timeout: float | None = None,
    ) -> ClassifyResult: ...

    def tokenize(
        self, text: str, *, model: str = "", add_special_tokens: bool = True, timeout: float | None = None
    ) -> TokenizeResult: ...

    def count_tokens(
        self, texts: Sequence[str], *, model: str = "", timeout: float | None = None
    ) -> CountTokensResult: ...

    def render_chat_template(
        self,
        messages: Sequence[Message],
        *,
        model: str,
        add_generation_prompt: bool = True,
        timeout: float | None = None,
    ) -> RenderedPrompt: ...

    def chat(
        self, messages: Sequence[Message], options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> ChatResult: ...

    def chat_stream(
        self, messages: Sequence[Message], options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> Iterator[ChatEvent]: ...

    def generate(
        self, prompt: str, options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> GenerateResult: ...

    def generate_stream(
        self, prompt: str, options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> Iterator[ChatEvent]: ...

    def list_models(self, *, task: Task | None = None, local_only: bool = False) -> list[ModelMetadata]: ...

    def model_metadata(self, model: str) -> ModelMetadata: ...

    def close(self) -> None: ...
