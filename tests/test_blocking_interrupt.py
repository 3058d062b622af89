"""Ctrl-C during a blocking call stops the call on the bridge's loop too.

``BlockingGateway`` runs the async gateway on a private loop thread; the caller's thread only
waits. When that wait is interrupted (KeyboardInterrupt, or any BaseException), the coroutine must
be cancelled and given a moment to clean up before the interrupt reaches the caller: otherwise it
keeps running (an embedding batch, an upstream stream) for nobody.

The interrupt is a real SIGINT sent to the main thread once the fake gateway reports, from the
loop thread, that the call is waiting; the caller's thread is then blocked in the bridge's wait,
which a signal interrupts.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import cast

import pytest

from ratatoskr_client.blocking import BlockingGateway
from ratatoskr_client.protocol import ModelGateway
from ratatoskr_client.types import ChatEvent, ChatOptions, ContentDelta, EmbedResult, Message

pytestmark = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread only"
)


class StuckGateway:
    """Answers nothing: each call waits on an event nobody sets, and says when it started waiting."""

    def __init__(self) -> None:
        self.waiting = threading.Event()
        self.outcomes: list[str] = []

    async def _wait_forever(self) -> None:
        self.waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.outcomes.append("cancelled")
            raise
        finally:
            self.outcomes.append("ended")

    async def embed(
        self, inputs: Sequence[str], *, model: str = "", truncate: bool = True, timeout: float | None = None
    ) -> EmbedResult:
        await self._wait_forever()
        raise AssertionError("unreachable")

    async def chat_stream(
        self, messages: Sequence[Message], options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> AsyncIterator[ChatEvent]:
        yield ContentDelta("first")
        await self._wait_forever()

    async def close(self) -> None:
        self.outcomes.append("closed")


async def _ready(gateway: StuckGateway) -> ModelGateway:
    return cast(ModelGateway, gateway)


@contextmanager
def interrupt_main_when(ready: threading.Event) -> Iterator[None]:
    """Send SIGINT to the main thread once ``ready`` is set; Python's own handler raises KeyboardInterrupt."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    main = threading.main_thread().ident
    assert main is not None

    def fire() -> None:
        if ready.wait(timeout=60):
            signal.pthread_kill(main, signal.SIGINT)

    sender = threading.Thread(target=fire, daemon=True)
    sender.start()
    try:
        yield
    finally:
        sender.join()
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def stuck() -> Iterator[tuple[StuckGateway, BlockingGateway]]:
    fake = StuckGateway()
    gateway = BlockingGateway(lambda: _ready(fake))
    yield fake, gateway
    gateway.close()


def test_an_interrupted_call_is_cancelled_on_the_loop(stuck: tuple[StuckGateway, BlockingGateway]) -> None:
    fake, gateway = stuck
    with interrupt_main_when(fake.waiting), pytest.raises(KeyboardInterrupt):
        gateway.embed(["hello"])
    # Already over when the interrupt reached us, not left running on the loop.
    assert fake.outcomes == ["cancelled", "ended"]


def test_an_interrupted_stream_is_cancelled_on_the_loop(stuck: tuple[StuckGateway, BlockingGateway]) -> None:
    fake, gateway = stuck
    events = gateway.chat_stream([Message("user", "hi")])
    assert next(events) == ContentDelta("first")
    with interrupt_main_when(fake.waiting), pytest.raises(KeyboardInterrupt):
        next(events)
    assert fake.outcomes == ["cancelled", "ended"]


def test_the_bridge_still_works_after_an_interrupt(stuck: tuple[StuckGateway, BlockingGateway]) -> None:
    fake, gateway = stuck
    with interrupt_main_when(fake.waiting), pytest.raises(KeyboardInterrupt):
        gateway.embed(["hello"])
    gateway.close()
    assert fake.outcomes == ["cancelled", "ended", "closed"]
