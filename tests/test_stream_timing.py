"""Stream ends and deadlines, told apart by what the upstream is doing at that moment, not by clocks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from ratatoskr_client import DeadlineExceeded
from ratatoskr_client.types import ChatOptions, ContentDelta, Done, Message
from ratatoskr_server.config import load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.providers import base
from tests.upstreams import ollama_double, openai_double
from tests.upstreams.harness import Upstream, serve

HELLO = [Message("user", "hi")]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as up:
        yield up


@pytest.fixture
async def gw(upstream: Upstream) -> AsyncIterator[EmbeddedGateway]:
    providers = {"up": {"kind": "openai_compat", "base_url": f"{upstream.base_url}/v1", "local": True}}
    gateway = EmbeddedGateway(load_settings(local={"preload": [], "auto_import_default": False}, providers=providers))
    yield gateway
    await gateway.close()


async def test_done_is_not_held_back_by_reading_past_the_end(
    gw: EmbeddedGateway, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the Ollama case below: a 3 s linger, the drain bound raised to 6 s, so a loaded machine has margin."""
    monkeypatch.setattr(base, "DRAIN_AFTER_END_S", 6.0)
    upstream.state["linger_s"] = 3.0
    upstream.state["paused"] = False
    paused_at_done: list[bool] = []
    async for event in gw.chat_stream(HELLO, ChatOptions(model="up/linger")):
        if isinstance(event, Done):
            paused_at_done.append(bool(upstream.state["paused"]))
    assert paused_at_done == [True]  # Done reached us while the server still held the body open


async def test_the_deadline_cuts_a_silent_upstream_mid_stream(gw: EmbeddedGateway, upstream: Upstream) -> None:
    upstream.state["paused"] = False
    received: list[str] = []
    with pytest.raises(DeadlineExceeded, match=r"the stream did not finish within the call's timeout of 0\.5s"):
        async for event in gw.chat_stream(HELLO, ChatOptions(model="up/stall"), timeout=0.5):
            if isinstance(event, ContentDelta):
                received.append(event.text)
    assert received == ["thinking about it"]
    assert upstream.state["paused"]  # cut during the silence, not when the next chunk finally came


async def test_a_stream_cut_after_its_finish_reason_completes(gw: EmbeddedGateway) -> None:
    """The finish reason arrived, then the body was cut before [DONE]: the answer is whole, not UNAVAILABLE."""
    events = [e async for e in gw.chat_stream(HELLO, ChatOptions(model="up/finished-cut"))]
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "stop"
    assert "".join(e.text for e in events if isinstance(e, ContentDelta))


async def test_ollama_done_is_not_held_back_either(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one stream skeleton hands out every adapter's end at once, NDJSON as well as SSE.

    The server lingers 3 s after its final line and the drain bound is raised to 6 s for this test,
    so a Done held back behind the drain would come after the linger; 3 s is margin enough for a
    loaded machine to hand over a Done that was not held back.
    """
    monkeypatch.setattr(base, "DRAIN_AFTER_END_S", 6.0)
    with serve(ollama_double.routes()) as up:
        up.state["linger_s"] = 3.0
        providers = {"ol": {"kind": "ollama", "base_url": up.base_url}}
        gateway = EmbeddedGateway(
            load_settings(local={"preload": [], "auto_import_default": False}, providers=providers)
        )
        try:
            up.state["paused"] = False
            paused_at_done: list[bool] = []
            async for event in gateway.chat_stream(HELLO, ChatOptions(model="ol/linger")):
                if isinstance(event, Done):
                    paused_at_done.append(bool(up.state["paused"]))
            assert paused_at_done == [True]
        finally:
            await gateway.close()
