"""What a provider can be asked to do, as small protocols: one per capability.

A provider is anything that answers model calls for the names routed to it: an HTTP adapter for
one wire format, or the local ONNX pool (``providers/local.py``).  Each implements only the
capabilities it declares, so the pipeline's last step calls a method that exists instead of one
that raises; ``capabilities`` is the declaration the router plans with.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from enum import StrEnum
from typing import Protocol, cast, runtime_checkable

from ratatoskr_client.types import (
    ChatEvent,
    ChatOptions,
    ChatResult,
    ClassifyResult,
    EmbedResult,
    GenerateResult,
    Message,
    NliResult,
)
from ratatoskr_server.providers.scrub import Scrubber


class Capability(StrEnum):
    CHAT = "chat"
    GENERATE = "generate"
    EMBED = "embed"
    NLI = "nli"
    CLASSIFY = "classify"


@runtime_checkable
class Provider(Protocol):
    """What every provider is, whatever it can do."""

    name: str

    @property
    def kind(self) -> str: ...

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    #: ChatOptions fields its wire format carries.
    @property
    def supported_parameters(self) -> frozenset[str]: ...

    #: True when the model runs on this host or a private network (nothing to pay, nothing leaves).
    @property
    def local(self) -> bool: ...

    #: Values that must never appear in anything it reports (keys, credentials).
    @property
    def secrets(self) -> list[str]: ...

    #: Removes those values from the text it answers with (an upstream may echo what it was sent).
    @property
    def scrubber(self) -> Scrubber: ...

    async def list_models(self) -> list[str]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class ChatProvider(Provider, Protocol):
    async def chat(self, model: str, messages: Sequence[Message], options: ChatOptions) -> ChatResult: ...

    def chat_stream(
        self, model: str, messages: Sequence[Message], options: ChatOptions
    ) -> AsyncIterator[ChatEvent]: ...


@runtime_checkable
class ContinuingChatProvider(ChatProvider, Protocol):
    """A chat provider that can continue another model's broken answer (streaming failover)."""

    def continuation_mode(self, model: str) -> str:
        """How ``model`` continues when the configuration does not say: "prefill", "prompt" or "none"."""
        ...

    def continue_stream(
        self, model: str, messages: Sequence[Message], partial: str, mode: str, options: ChatOptions
    ) -> AsyncIterator[ChatEvent]:
        """The rest of the answer that begins with ``partial``, built for this wire format and ``mode``."""
        ...


@runtime_checkable
class GenerateProvider(Provider, Protocol):
    async def generate(self, model: str, prompt: str, options: ChatOptions) -> GenerateResult: ...

    def generate_stream(self, model: str, prompt: str, options: ChatOptions) -> AsyncIterator[ChatEvent]: ...


@runtime_checkable
class EmbedProvider(Provider, Protocol):
    async def embed(
        self, model: str, inputs: Sequence[str], *, truncate: bool = True, deadline: float | None = None
    ) -> EmbedResult: ...


@runtime_checkable
class NliProvider(Provider, Protocol):
    async def nli(
        self,
        model: str,
        pairs: Sequence[tuple[str, str]],
        *,
        truncate: bool = True,
        deadline: float | None = None,
    ) -> NliResult: ...


@runtime_checkable
class ClassifyProvider(Provider, Protocol):
    async def classify(
        self,
        model: str,
        text: str,
        labels: Sequence[str],
        *,
        multi_label: bool = False,
        hypothesis_template: str = "",
        deadline: float | None = None,
    ) -> ClassifyResult: ...


# The declaration is the truth the router plans with, and a test holds every adapter's methods to it;
# checking it is a set lookup, where ``isinstance`` against a protocol walks every member (tens of
# microseconds, on every call).


def as_chat(provider: Provider) -> ChatProvider | None:
    return cast(ChatProvider, provider) if Capability.CHAT in provider.capabilities else None


def as_continuing(provider: Provider) -> ContinuingChatProvider | None:
    """The provider as one that continues broken answers, or None (the in-process pool never does)."""
    if Capability.CHAT not in provider.capabilities or not hasattr(provider, "continue_stream"):
        return None
    return cast(ContinuingChatProvider, provider)


def as_generate(provider: Provider) -> GenerateProvider | None:
    return cast(GenerateProvider, provider) if Capability.GENERATE in provider.capabilities else None


def as_embed(provider: Provider) -> EmbedProvider | None:
    return cast(EmbedProvider, provider) if Capability.EMBED in provider.capabilities else None


def as_nli(provider: Provider) -> NliProvider | None:
    return cast(NliProvider, provider) if Capability.NLI in provider.capabilities else None


def as_classify(provider: Provider) -> ClassifyProvider | None:
    return cast(ClassifyProvider, provider) if Capability.CLASSIFY in provider.capabilities else None
