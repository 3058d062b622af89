"""A blocking face for any asyncio gateway, by running it on a private event loop thread.

The embedded gateway is asyncio-native (it shares the daemon's code); code
without an event loop still deserves the same calls, so this bridge owns one
loop in a daemon thread and submits every call to it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from ratatoskr_client.protocol import ModelGateway
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
    Task,
    TokenizeResult,
)

T = TypeVar("T")


class BlockingGateway:
    """Wraps an async ``ModelGateway`` built on the bridge's own loop."""

    def __init__(self, factory: Callable[[], Awaitable[ModelGateway]]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ratatoskr-embedded", daemon=True)
        self._thread.start()
        self._closed = False
        try:
            self._inner: ModelGateway = self._run(self._build(factory))
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _build(factory: Callable[[], Awaitable[ModelGateway]]) -> ModelGateway:
        return await factory()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def inner(self) -> ModelGateway:
        return self._inner

    def embed(
        self,
        inputs: Sequence[str],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> EmbedResult:
        return self._run(self._inner.embed(inputs, model=model, truncate=truncate, timeout=timeout))

    def nli(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> NliResult:
        return self._run(self._inner.nli(pairs, model=model, truncate=truncate, timeout=timeout))

    def classify(
        self,
        text: str,
        labels: Sequence[str],
        *,
        model: str = "",
        multi_label: bool = False,
        hypothesis_template: str = "",
        timeout: float | None = None,
    ) -> ClassifyResult:
        return self._run(
            self._inner.classify(
                text,
                labels,
                model=model,
                multi_label=multi_label,
                hypothesis_template=hypothesis_template,
                timeout=timeout,
            )
        )

    def tokenize(
        self, text: str, *, model: str = "", add_special_tokens: bool = True, timeout: float | None = None
    ) -> TokenizeResult:
        return self._run(
            self._inner.tokenize(text, model=model, add_special_tokens=add_special_tokens, timeout=timeout)
        )

    def count_tokens(self, texts: Sequence[str], *, model: str = "", timeout: float | None = None) -> CountTokensResult:
        return self._run(self._inner.count_tokens(texts, model=model, timeout=timeout))

    def chat(
        self, messages: Sequence[Message], options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> ChatResult:
        return self._run(self._inner.chat(messages, options, timeout=timeout))

    def chat_stream(
        self, messages: Sequence[Message], options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> Iterator[ChatEvent]:
        return self._iterate(self._inner.chat_stream(messages, options, timeout=timeout))

    def generate(
        self, prompt: str, options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> GenerateResult:
        return self._run(self._inner.generate(prompt, options, timeout=timeout))

    def generate_stream(
        self, prompt: str, options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> Iterator[ChatEvent]:
        return self._iterate(self._inner.generate_stream(prompt, options, timeout=timeout))

    def _iterate(self, stream: AsyncIterator[T]) -> Iterator[T]:
        """Pull an async stream item by item on the bridge's loop; stopping early closes it there."""

        async def step() -> tuple[bool, T | None]:
            try:
                return True, await anext(stream)
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, item = self._run(step())
                if not more:
                    return
                yield item  # type: ignore[misc]
        finally:
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                self._run(closer())

    def list_models(self, *, task: Task | None = None, local_only: bool = False) -> list[ModelMetadata]:
        return self._run(self._inner.list_models(task=task, local_only=local_only))

    def model_metadata(self, model: str) -> ModelMetadata:
        return self._run(self._inner.model_metadata(model))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._inner.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> BlockingGateway:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
