"""Bulkheads, the idle bound between stream events, and breaker state where operators look (issue 12).

The bulkhead case is the issue's report scaled down: the front door (server.max_in_flight = 32) is
filled by streams hung on one upstream (the double's "hold" model answers only when released);
with a bulkhead of 8 on that provider, 8 hang, the other 24 are refused at once naming the
bulkhead, and 20 local Embed calls all answer while the 8 still hang.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ratatoskr_client import AsyncServiceClient
from ratatoskr_client.convert import model_metadata_from_pb, model_metadata_to_pb
from ratatoskr_client.errors import ResourceExhausted, Unavailable
from ratatoskr_client.types import ChatOptions, ContentDelta, Done, Message
from ratatoskr_server.config import load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.gateway import Gateway
from ratatoskr_server.routing.breaker import Breakers
from tests.conftest import MODEL, DaemonProcess, run_ratatoskr
from tests.upstreams import anthropic_double, openai_double
from tests.upstreams.harness import Upstream, serve

HI = [Message("user", "hi")]


@pytest.fixture(scope="module")
def up() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as upstream:
        yield upstream


def _holds(up: Upstream) -> int:
    return sum(1 for r in up.requests if isinstance(r.body, dict) and r.body.get("model") == "hold")


async def _until(condition: Any, what: str, limit_s: float = 20.0) -> None:
    give_up = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"never reached: {what}")
        await asyncio.sleep(0.005)


@pytest.fixture
def hung(model_root: Path, up: Upstream) -> Iterator[DaemonProcess]:
    up.state["release"] = threading.Event()
    d = DaemonProcess(
        model_root,
        server={"max_in_flight": 32},
        providers={"up": {"kind": "openai_compat", "base_url": f"{up.base_url}/v1", "max_in_flight": 8}},
        resilience={"attempts": 1, "breaker": {"min_calls": 2, "failure_threshold": 0.5}},
    ).start()
    try:
        yield d
    finally:
        up.state["release"].set()
        d.stop()


def test_streams_hung_on_one_upstream_do_not_stop_local_embed_calls(hung: DaemonProcess, up: Upstream) -> None:
    before = _holds(up)

    async def run() -> dict[str, Any]:
        async with AsyncServiceClient(hung.socket, timeout=30) as client:

            async def stream() -> str:
                text = ""
                async for event in client.chat_stream(HI, ChatOptions(model="up/hold")):
                    if isinstance(event, ContentDelta):
                        text += event.text
                return text

            streams = [asyncio.create_task(stream()) for _ in range(32)]
            await _until(lambda: sum(t.done() for t in streams) == 24, "24 streams refused by the bulkhead")
            await _until(lambda: _holds(up) - before == 8, "8 streams hung on the upstream")
            embeds = await asyncio.gather(*(client.embed([f"local call {i}"]) for i in range(20)))
            status = await client.status()
            up.state["release"].set()
            outcomes = await asyncio.gather(*streams, return_exceptions=True)
            return {"embeds": embeds, "status": status, "outcomes": outcomes}

    out = asyncio.run(run())
    assert len(out["embeds"]) == 20 and all(e.model == MODEL and e.dimension == 384 for e in out["embeds"])
    refused = [o for o in out["outcomes"] if isinstance(o, BaseException)]
    assert len(refused) == 24 and all(isinstance(o, ResourceExhausted) for o in refused), refused[:2]
    assert all("providers.up is at its limit of 8 calls in flight" in o.message for o in refused)
    assert all(o.retry_after_s == 1.0 for o in refused)
    answered = [o for o in out["outcomes"] if isinstance(o, str)]
    assert answered == [openai_double.assembled_text()] * 8
    status = out["status"]
    assert status.bulkhead_in_flight["providers.up"] == 8 and status.bulkhead_limits["providers.up"] == 8
    assert status.bulkhead_in_flight["local"] == 0 and status.bulkhead_limits["local"] == 192
    assert _holds(up) - before == 8  # the refused streams never reached the upstream

    # The breaker leftover of part 3: `ratatoskr backends` shows what the running daemon's breakers say.
    async def trip() -> None:
        async with AsyncServiceClient(hung.socket, timeout=10) as client:
            for _ in range(2):
                with pytest.raises(Unavailable):
                    await client.chat(HI, ChatOptions(model="up/unavailable"))

    asyncio.run(trip())
    done = run_ratatoskr(
        "backends", "--json", "--config", str(hung.config_path), "--socket", str(hung.socket), "--timeout", "3"
    )
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["name"] == "up" and row["breakers"] == {"unavailable": "open"}


# -- the idle bound between stream events ----------------------------------------------------------
@pytest.fixture
async def idle(up: Upstream) -> AsyncIterator[EmbeddedGateway]:
    providers = {"up": {"kind": "openai_compat", "base_url": f"{up.base_url}/v1", "stream_idle_timeout_s": 0.3}}
    routes = {"alive": {"candidates": ["up/keepalive-early", "up/gpt-test"]}}
    settings = load_settings(
        local={"preload": [], "auto_import_default": False},
        providers=providers,
        routes=routes,
        resilience={"attempts": 1, "breaker": {"enabled": False}},
    )
    gw = EmbeddedGateway(settings)
    yield gw
    await gw.close()


async def test_keep_alive_comments_do_not_hold_a_stuck_stream_open(idle: EmbeddedGateway) -> None:
    """The double sends comments every 50 ms for a minute: only the idle bound can end this."""
    seen = ""
    started = time.monotonic()
    with pytest.raises(Unavailable, match=r"no stream event for 0\.3s .*keep-alive comments") as failed:
        async for event in idle.chat_stream(HI, ChatOptions(model="up/keepalive")):
            if isinstance(event, ContentDelta):
                seen += event.text
    assert seen == "Let me think"  # it had committed: the failure is visible, not hidden
    assert "providers.up.stream_idle_timeout_s" in failed.value.message
    assert time.monotonic() - started < 10  # not the minute of comments


async def test_anthropic_pings_do_not_hold_a_stuck_stream_open() -> None:
    with serve(anthropic_double.routes()) as an:
        providers = {
            "claude": {
                "kind": "anthropic",
                "base_url": f"{an.base_url}/v1",
                "api_key": "sk-ant-test-0123456789",
                "stream_idle_timeout_s": 0.3,
            }
        }
        settings = load_settings(local={"preload": [], "auto_import_default": False}, providers=providers)
        gw = EmbeddedGateway(settings)
        seen = ""
        started = time.monotonic()
        try:
            with pytest.raises(Unavailable, match=r"claude: no stream event for 0\.3s"):
                async for event in gw.chat_stream(HI, ChatOptions(model="claude/pinging", max_tokens=64)):
                    if isinstance(event, ContentDelta):
                        seen += event.text
        finally:
            await gw.close()
        assert seen == "tick 0 tick 1 "
        assert time.monotonic() - started < 10


async def test_an_idle_stream_before_its_first_content_falls_back(idle: EmbeddedGateway, up: Upstream) -> None:
    text, done = "", None
    async for event in idle.chat_stream(HI, ChatOptions(model="alive")):
        if isinstance(event, ContentDelta):
            text += event.text
        if isinstance(event, Done):
            done = event
    assert text == openai_double.assembled_text()
    assert done is not None and done.model == "gpt-test"
    assert done.notes.failed_over == ["up/keepalive-early"]


# -- breaker state in ListModels -------------------------------------------------------------------
async def test_list_models_shows_each_remote_models_breaker(up: Upstream) -> None:
    settings = load_settings(
        local={"preload": [], "auto_import_default": False},
        providers={"up": {"kind": "openai_compat", "base_url": f"{up.base_url}/v1"}},
        resilience={"breaker": {"min_calls": 2, "failure_threshold": 0.5}},
    )
    gateway = Gateway.from_settings(settings)
    gw = EmbeddedGateway(settings, gateway=gateway)
    try:
        breakers = Breakers(settings.resilience.breaker, gateway.breakers)
        breakers.record("up/tools", False)
        for _ in range(2):
            breakers.record("up/gpt-test", True)
        listed = {m.info.id: m for m in await gw.list_models()}
        assert listed["up/gpt-test"].info.breaker == "open"
        assert listed["up/tools"].info.breaker == "closed"
        assert model_metadata_from_pb(model_metadata_to_pb(listed["up/gpt-test"])) == listed["up/gpt-test"]
        assert (await gw.model_metadata("up/gpt-test")).info.breaker == "open"
    finally:
        await gw.close()
