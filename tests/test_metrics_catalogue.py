"""Each metric of the catalogue moves when its event happens (in-process gateway, loopback upstream,
real MiniLM), and model labels stay bounded to names the configuration or catalogue knows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ratatoskr_client.errors import RatatoskrError
from ratatoskr_client.types import ChatOptions, Done, Message
from ratatoskr_server.config import load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.policy.budget.pricing import Price
from tests.conftest import MODEL
from tests.upstreams import openai_double
from tests.upstreams.harness import Upstream, serve

HI = [Message("user", "hi")]
PRICE = Price(Decimal(1), Decimal(2))  # USD per million tokens, as declared below
DAILY = Decimal("0.01")
KNOWN = "up/gpt-test"


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as up:
        yield up


def _settings(model_root: Path, upstream: Upstream, tmp: Path) -> dict[str, Any]:
    return {
        "local": {
            "model_dir": model_root,
            "auto_import_default": False,
            "preload": [],
            # Two inputs make a batch; the first waits (up to 10 s) for the second.
            "batching": {"max_batch_size": 2, "max_wait_ms": 10_000, "concurrency": 1},
        },
        "resilience": {"attempts": 1},
        "providers": {"up": {"kind": "openai_compat", "base_url": f"{upstream.base_url}/v1", "models": ["gpt-test"]}},
        "budget": {
            "ledger_path": str(tmp / "budget.sqlite3"),
            "daily_usd": str(DAILY),
            "prices": {"up/*": {"input_per_million": "1", "output_per_million": "2"}},
        },
    }


@pytest.fixture
async def gw(model_root: Path, upstream: Upstream, tmp_path: Path) -> AsyncIterator[EmbeddedGateway]:
    g = EmbeddedGateway(load_settings(**_settings(model_root, upstream, tmp_path)))
    yield g
    await g.close()


def _value(gw: EmbeddedGateway, name: str, **labels: str) -> float:
    return gw.metrics.registry.get_sample_value(name, labels) or 0.0


async def _until(check: Any, rounds: int = 2000) -> None:
    """Let the loop run until ``check()`` holds (a gauge has no event to wait on); 10 s at most."""
    for _ in range(rounds):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition did not come true")


async def test_a_chat_moves_calls_latency_tokens_cost_budget_and_overhead(gw: EmbeddedGateway) -> None:
    result = await gw.chat(HI, ChatOptions(model=KNOWN, max_tokens=10))
    assert result.usage.completion_tokens == openai_double.USAGE["completion_tokens"]
    labels = {"rpc": "Chat", "model": KNOWN}
    assert _value(gw, "ratatoskr_model_calls_total", **labels, provider="up", code="OK") == 1
    assert _value(gw, "ratatoskr_model_call_duration_seconds_count", **labels) == 1
    assert _value(gw, "ratatoskr_gateway_overhead_seconds_count", rpc="Chat") == 1
    assert _value(gw, "ratatoskr_input_tokens_total", model=KNOWN) == openai_double.USAGE["prompt_tokens"]
    assert _value(gw, "ratatoskr_output_tokens_total", model=KNOWN) == openai_double.USAGE["completion_tokens"]
    assert _value(gw, "ratatoskr_output_tokens_per_second_count", model=KNOWN) == 1
    assert _value(gw, "ratatoskr_output_tokens_per_second_sum", model=KNOWN) > 0
    cost = float(PRICE.cost(openai_double.USAGE["prompt_tokens"], openai_double.USAGE["completion_tokens"]))
    assert _value(gw, "ratatoskr_cost_usd_total", provider="up", model=KNOWN) == pytest.approx(cost)
    [budget] = [b for b in await gw.gateway.budget("global") if b.window.startswith("day:")]
    remaining = _value(gw, "ratatoskr_budget_remaining_usd", scope="global", window=budget.window)
    assert 0 < remaining < float(DAILY)  # the first call's hold came off the limit
    # A second call starts from what the first spent: less remains.
    await gw.chat(HI, ChatOptions(model=KNOWN, max_tokens=10))
    assert _value(gw, "ratatoskr_budget_remaining_usd", scope="global", window=budget.window) < remaining
    assert _value(gw, "ratatoskr_cost_usd_total", provider="up", model=KNOWN) == pytest.approx(2 * cost)
    # A failed call is counted with its status.
    with pytest.raises(RatatoskrError) as failed:
        await gw.chat(HI, ChatOptions(model="up/auth"))
    assert _value(gw, "ratatoskr_model_calls_total", rpc="Chat", model="other", provider="up", code=failed.value.code)


async def test_cost_is_counted_for_priced_calls_without_any_budget(
    model_root: Path, upstream: Upstream, tmp_path: Path
) -> None:
    """No limit configured, only prices: the meter still answers "what did we spend" (unary and
    streamed, at the reported tokens), and a refused call, a local call or an unpriced one add nothing."""
    config = _settings(model_root, upstream, tmp_path)
    config["budget"] = {"prices": config["budget"]["prices"]}  # prices only: no budget stage at all
    config["providers"]["near"] = {"kind": "openai_compat", "base_url": f"{upstream.base_url}/v1", "local": True}
    g = EmbeddedGateway(load_settings(**config))
    try:
        assert not g.settings.budget.enabled()
        cost = float(PRICE.cost(openai_double.USAGE["prompt_tokens"], openai_double.USAGE["completion_tokens"]))
        await g.chat(HI, ChatOptions(model=KNOWN, max_tokens=10))
        assert _value(g, "ratatoskr_cost_usd_total", provider="up", model=KNOWN) == pytest.approx(cost)
        events = [e async for e in g.chat_stream(HI, ChatOptions(model=KNOWN))]
        assert isinstance(events[-1], Done)
        assert _value(g, "ratatoskr_cost_usd_total", provider="up", model=KNOWN) == pytest.approx(2 * cost)
        with pytest.raises(RatatoskrError):
            await g.chat(HI, ChatOptions(model="up/auth"))  # refused upstream: nothing was spent
        await g.chat(HI, ChatOptions(model="near/gpt-test"))  # a server on this host costs nothing
        assert _value(g, "ratatoskr_cost_usd_total", provider="up", model=KNOWN) == pytest.approx(2 * cost)
        spent = {
            (sample.labels["provider"], sample.labels["model"]): sample.value
            for metric in g.metrics.registry.collect()
            for sample in metric.samples
            if sample.name == "ratatoskr_cost_usd_total"
        }
        assert spent == {("up", KNOWN): pytest.approx(2 * cost)}  # nothing for the refused or the local call
    finally:
        await g.close()


async def test_a_stream_moves_time_to_first_token(gw: EmbeddedGateway) -> None:
    events = [e async for e in gw.chat_stream(HI, ChatOptions(model=KNOWN))]
    assert isinstance(events[-1], Done)
    assert _value(gw, "ratatoskr_time_to_first_token_seconds_count", model=KNOWN) == 1
    assert _value(gw, "ratatoskr_model_calls_total", rpc="ChatStream", model=KNOWN, provider="up", code="OK") == 1


async def test_model_labels_only_for_known_models(gw: EmbeddedGateway) -> None:
    for i in range(3):
        await gw.chat(HI, ChatOptions(model=f"up/caller-chosen-{i}"))
    assert _value(gw, "ratatoskr_model_calls_total", rpc="Chat", model="other", provider="up", code="OK") == 3
    samples = [s for m in gw.metrics.registry.collect() for s in m.samples if "caller-chosen" in str(s.labels)]
    assert samples == []


async def test_the_pool_and_batches_move_their_metrics(gw: EmbeddedGateway) -> None:
    assert _value(gw, "ratatoskr_pool_models_loaded") == 0
    await gw.load_model(MODEL)
    assert _value(gw, "ratatoskr_pool_models_loaded") == 1
    assert _value(gw, "ratatoskr_pool_memory_mb") > 0
    assert _value(gw, "ratatoskr_model_load_seconds_count", model=MODEL) == 1
    # The first input waits in the queue for company; the second completes the batch.
    first = asyncio.ensure_future(gw.embed(["the first text"], model=MODEL))
    await _until(lambda: _value(gw, "ratatoskr_queue_depth", model=MODEL) == 1)
    second = await gw.embed(["the second one"], model=MODEL)
    assert len((await first).vectors) == len(second.vectors) == 1
    assert _value(gw, "ratatoskr_queue_depth", model=MODEL) == 0
    assert _value(gw, "ratatoskr_batch_size_count", model=MODEL) == 1
    assert _value(gw, "ratatoskr_batch_size_sum", model=MODEL) == 2
    assert _value(gw, "ratatoskr_batch_tokens_sum", model=MODEL) >= 2 * 3  # two rows, [CLS] text [SEP]
    assert _value(gw, "ratatoskr_model_calls_total", rpc="Embed", model=MODEL, provider="local", code="OK") == 2
    assert await gw.unload_model(MODEL)
    assert _value(gw, "ratatoskr_pool_models_loaded") == 0
    assert _value(gw, "ratatoskr_pool_memory_mb") == 0


async def test_metrics_off_record_nothing_and_calls_still_answer(
    model_root: Path, upstream: Upstream, tmp_path: Path
) -> None:
    """metrics.enabled = false: nothing serves them, so a call records none (and answers the same)."""
    config = _settings(model_root, upstream, tmp_path)
    config["metrics"] = {"enabled": False}
    g = EmbeddedGateway(load_settings(**config))
    try:
        result = await g.chat(HI, ChatOptions(model=KNOWN, max_tokens=10))
        assert result.usage.completion_tokens == openai_double.USAGE["completion_tokens"]
        assert [e async for e in g.chat_stream(HI, ChatOptions(model=KNOWN))][-1].finish_reason == "stop"
        assert (await g.embed(["one"])).dimension > 0
        samples = [(m.name, s) for m in g.metrics.registry.collect() for s in m.samples]
        moved = {name for name, s in samples if s.value and not s.name.endswith("_created")}
        # Only the pool's state, set when a model loads (not per call), is kept.
        assert moved == {
            "ratatoskr_model_load_seconds",
            "ratatoskr_pool_memory_budget_mb",
            "ratatoskr_pool_memory_mb",
            "ratatoskr_pool_models_loaded",
        }
    finally:
        await g.close()
