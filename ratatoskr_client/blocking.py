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
from typing import Any, Generic, TypeVar

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
    RenderedPrompt,
    Task,
    TokenizeResult,
)

T = TypeVar("T")

#: How long an interrupted call waits for its cancelled coroutine to finish before re-raising.
CANCEL_GRACE_S = 2.0


class _LoopCall(Generic[T]):
    """One coroutine run as a task on the bridge's loop, which the waiting thread can abandon.

    ``start`` and ``abandon`` run on the loop (``call_soon_threadsafe`` keeps them in order), so
    ``abandon`` either cancels the task ``start`` made or, if the wait ended before ``start`` was
    queued, drops the coroutine unstarted. ``finished`` is set once the task is over either way.
    """

    def __init__(self, coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop) -> None:
        self._coro = coro
        self._loop = loop
        self._task: asyncio.Task[T] | None = None
        self.finished = threading.Event()

    def start(self) -> None:
        self._task = self._loop.create_task(self._coro)
        self._task.add_done_callback(lambda _: self.finished.set())

    def abandon(self) -> None:
        if self._task is not None:
            self._task.cancel()  # ``finished`` is set when the coroutine has handled it
            return
        self._coro.close()
        self.finished.set()

    def result(self) -> T:
        assert self._task is not None
        return self._task.result()


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
        """Run ``coro`` on the bridge's loop and wait for it; an interrupted wait cancels it there.

        Whatever ends the wait early (Ctrl-C's KeyboardInterrupt, any BaseException) also cancels
        the coroutine and waits up to ``CANCEL_GRACE_S`` for it to finish, so the interrupt reaches
        the caller after the work it started has stopped, not while it still runs for nobody.
        """
        call = _LoopCall(coro, self._loop)
        try:
            self._loop.call_soon_threadsafe(call.start)
            call.finished.wait()
        except BaseException:
            self._loop.call_soon_threadsafe(call.abandon)
            call.finished.wait(CANCEL_GRACE_S)
            raise
        return call.result()

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

    def render_chat_template(
        self,
        messages: Sequence[Message],
        *,
        model: str,
        add_generation_prompt: bool = True,
        timeout: float | None = None,
    ) -> RenderedPrompt:
        return self._run(
            self._inner.render_chat_template(
                messages, model=model, add_generation_prompt=add_generation_prompt, timeout=timeout
            )
        )

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
