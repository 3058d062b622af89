"""Live refresh of the model registry from protocol-faithful OpenRouter and Ollama doubles on 127.0.0.1.

Proves the conversions (OpenRouter's per-token price strings to exact
per-million Decimals, Ollama's ``model_info`` context length and Modelfile
defaults), the merge with the embedded catalogue, the single atomic swap
(a reader mid-refresh sees the whole old table; a table once taken never
changes), and that a failing source keeps its old data and is reported
while the other source still updates.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from ratatoskr_server.config import HttpSettings
from ratatoskr_server.registry import ModelRecord, ModelRegistry, ParameterSpec, Pricing
from ratatoskr_server.registry.models import per_token_to_per_million
from tests.upstreams import ollama_registry_double, openrouter_double
from tests.upstreams.harness import Upstream, serve

HTTP = HttpSettings(connect_timeout_s=2, read_timeout_s=5, total_timeout_s=10)


@pytest.fixture
def openrouter() -> Iterator[Upstream]:
    with serve(openrouter_double.routes()) as upstream:
        yield upstream


@pytest.fixture
def ollama() -> Iterator[Upstream]:
    with serve(ollama_registry_double.routes()) as upstream:
        yield upstream


def url(upstream: Upstream) -> str:
    return upstream.base_url + openrouter_double.PATH


async def refreshed(openrouter: Upstream, ollama: Upstream, registry: ModelRegistry | None = None) -> ModelRegistry:
    registry = registry or ModelRegistry.embedded()
    report = await registry.refresh(openrouter_url=url(openrouter), ollama={"ollama": ollama.base_url}, http=HTTP)
    assert report.ok, report
    return registry


def found(registry: ModelRegistry, provider: str, model: str) -> ModelRecord:
    record = registry.lookup(provider, model)
    assert record is not None, (provider, model)
    return record


def prices(record: ModelRecord) -> tuple[str | None, ...]:
    assert record.pricing is not None, record.id
    pricing = record.pricing
    values = (pricing.input_per_million, pricing.output_per_million, pricing.cached_input_per_million)
    assert all(v is None or type(v) is Decimal for v in values)
    return tuple(None if v is None else str(v) for v in values)


# ---- a refresh that works -------------------------------------------------------------------------


async def test_refresh_asks_each_source_in_its_protocol(openrouter: Upstream, ollama: Upstream) -> None:
    registry = ModelRegistry.embedded()
    report = await registry.refresh(openrouter_url=url(openrouter), ollama={"ollama": ollama.base_url}, http=HTTP)

    assert [(s.name, s.ok, s.models, s.error) for s in report.sources] == [
        ("openrouter", True, len(openrouter_double.MODELS), ""),
        ("ollama", True, len(ollama_registry_double.MODELS), ""),
    ]
    assert [(r.method, r.path) for r in openrouter.requests] == [("GET", "/api/v1/models")]
    assert "authorization" not in {k.lower() for k in openrouter.requests[0].headers}
    assert (ollama.requests[0].method, ollama.requests[0].path) == ("GET", "/api/tags")
    assert [r.body for r in ollama.requests[1:]] == [{"model": name} for name in ollama_registry_double.MODELS]
    assert len(registry.live) == len(openrouter_double.MODELS) + len(ollama_registry_double.MODELS)


@pytest.mark.parametrize(
    ("per_token", "per_million"),
    [
        ("0.000003", "3"),
        ("0.000015", "15"),
        ("0.0000001", "0.1"),
        ("0.00000015", "0.15"),
        ("0.000000075", "0.075"),
        ("0.00003", "30"),
        ("0", "0"),
        ("0.000000001", "0.001"),
        ("-1", None),
        ("", None),
        ("n/a", None),
    ],
)
def test_per_token_to_per_million_is_exact(per_token: str, per_million: str | None) -> None:
    converted = per_token_to_per_million(per_token)
    if per_million is None:
        assert converted is None
    else:
        assert converted == Decimal(per_million)
        assert str(converted) == per_million


async def test_openrouter_prices_are_exact_decimals(openrouter: Upstream, ollama: Upstream) -> None:
    registry = await refreshed(openrouter, ollama)
    assert prices(found(registry, "openrouter", "anthropic/claude-3.5-sonnet")) == ("3", "15", "0.3")
    assert prices(found(registry, "openrouter", "openai/gpt-4o-mini")) == ("0.15", "0.6", "0.075")
    assert prices(found(registry, "openrouter", "meta-llama/llama-3.1-8b-instruct")) == ("0.1", "0.02", None)
    assert prices(found(registry, "openrouter", "openai/gpt-4")) == ("30", "60", None)
    # "-1" means the price varies: unknown, not negative and not zero.
    assert found(registry, "openrouter", "openrouter/auto").pricing is None


async def test_openrouter_records_carry_its_facts_and_the_catalogue_s_ranges(
    openrouter: Upstream, ollama: Upstream
) -> None:
    registry = await refreshed(openrouter, ollama)

    sonnet = found(registry, "openrouter", "anthropic/claude-3.5-sonnet")
    assert (sonnet.source, sonnet.context_window, sonnet.max_output_tokens) == ("live", 200_000, 8_192)
    assert sonnet.tokenizer_family == "claude"
    assert sonnet.description == "New Claude 3.5 Sonnet delivers better-than-Opus capabilities."
    # Listed: the catalogue's range where it has one; max_tokens bounded by OpenRouter's max output.
    assert sonnet.parameters["temperature"] == ParameterSpec(availability="mutable", min=0, max=1, default=1)
    assert sonnet.parameters["max_tokens"] == ParameterSpec(availability="mutable", min=1, max=8_192)
    # Not listed: unsupported, whatever the catalogue says.
    assert sonnet.parameters["seed"].availability == "unsupported"
    assert sonnet.parameters["response_format"].availability == "unsupported"
    assert sonnet.parameters["parallel_tool_calls"].availability == "unsupported"

    mini = found(registry, "openrouter", "openai/gpt-4o-mini")
    assert mini.tokenizer_family == "o200k"  # OpenRouter's "GPT", made precise by the catalogue
    assert mini.parameters["seed"].availability == "mutable"
    assert mini.parameters["top_k"].availability == "unsupported"

    llama = found(registry, "openrouter", "meta-llama/llama-3.1-8b-instruct")
    assert llama.context_window == 131_072
    assert llama.max_output_tokens == 131_072  # null from OpenRouter: the catalogue's value
    assert llama.tokenizer_family == "llama3"
    assert llama.parameters["top_k"].availability == "opaque"  # listed, and the catalogue has no range
    assert llama.parameters["tools"].availability == "unsupported"

    auto = found(registry, "openrouter", "openrouter/auto")
    assert auto.tokenizer_family == ""
    assert {spec.availability for spec in auto.parameters.values()} == {"unsupported"}


async def test_ollama_records_from_tags_and_show(openrouter: Upstream, ollama: Upstream) -> None:
    registry = await refreshed(openrouter, ollama)

    llama3 = found(registry, "ollama", "llama3")
    assert (llama3.id, llama3.source, llama3.context_window) == ("llama3:latest", "live", 8_192)
    assert llama3.pricing == Pricing.free()
    assert llama3.tokenizer_family == "llama3"  # from the catalogue's llama-3-8b
    assert llama3.parameters["tools"].availability == "unsupported"  # capabilities: completion only
    assert llama3.description.startswith("Meta Llama 3 8B")
    assert llama3.description.endswith("Served by Ollama (llama, 8.0B, Q4_0).")

    # A user's own model: the trained window from model_info (not the Modelfile's num_ctx) and its defaults.
    custom = found(registry, "ollama", "my-assistant")
    assert custom.context_window == 131_072
    assert custom.parameters["temperature"] == ParameterSpec(availability="mutable", min=0, max=2, default=0.6)
    assert custom.parameters["top_k"].default == 20
    assert custom.parameters["tools"].availability == "mutable"
    assert custom.parameters["max_tokens"].max == 131_072

    qwen = found(registry, "ollama", "qwen2.5:7b")
    assert (qwen.context_window, qwen.tokenizer_family) == (32_768, "qwen2")

    minilm = found(registry, "ollama", "all-minilm")
    assert (minilm.context_window, minilm.tasks, minilm.parameters) == (512, ["embed"], {})


async def test_live_wins_over_embedded_and_embedded_answers_the_rest(openrouter: Upstream, ollama: Upstream) -> None:
    registry = await refreshed(openrouter, ollama)

    # Same model, two views: the live one where the live source is the one asked.
    assert found(registry, "ollama", "all-minilm").context_window == 512
    assert found(registry, "local", "all-minilm").context_window == 256
    assert found(registry, "openrouter", "openai/gpt-4").context_window == 8_191
    assert found(registry, "openai", "gpt-4").context_window == 8_192
    # Models no live source lists still come from the catalogue.
    assert found(registry, "anthropic", "claude-3-opus-20240229").source == "embedded"

    listed = {r.id: r for r in registry.records()}
    assert listed["llama3:latest"].source == "live"
    assert listed["anthropic/claude-3.5-sonnet"].source == "live"
    assert listed["gpt-4o"].source == "embedded"
    # Ollama's all-minilm is the catalogue's all-minilm-l6-v2 (it claims that alias): listed once, live.
    assert "all-minilm-l6-v2" not in listed
    assert listed["all-minilm:latest"].context_window == 512


# ---- the swap is atomic ---------------------------------------------------------------------------


async def test_a_reader_mid_refresh_sees_the_whole_old_table(openrouter: Upstream, ollama: Upstream) -> None:
    openrouter.state["models"] = openrouter_double.MODELS[:2]
    ollama.state["models"] = dict(list(ollama_registry_double.MODELS.items())[:1])
    registry = await refreshed(openrouter, ollama)
    old_live = registry.live
    old_ids = sorted(r.id for r in registry.records())
    old_sonnet = found(registry, "openrouter", "anthropic/claude-3.5-sonnet")

    # The next catalogue: a new price and new models on both sources.
    cheaper = copy.deepcopy(openrouter_double.MODELS)
    cheaper[0]["pricing"]["prompt"] = "0.0000025"
    openrouter.state["models"] = cheaper
    ollama.state["models"] = ollama_registry_double.MODELS
    gate, waiting = threading.Event(), threading.Event()
    ollama.state.update(gate=gate, show_waiting=waiting)

    task = asyncio.create_task(
        registry.refresh(openrouter_url=url(openrouter), ollama={"ollama": ollama.base_url}, http=HTTP)
    )
    assert await asyncio.to_thread(waiting.wait, 5)
    for _ in range(500):  # both sources asked; Ollama is now held at the gate
        if len(openrouter.requests) == 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # time for OpenRouter's answer to be read and converted (not swapped in)
    try:
        assert registry.live is old_live
        assert sorted(r.id for r in registry.records()) == old_ids
        assert found(registry, "openrouter", "anthropic/claude-3.5-sonnet") is old_sonnet
        assert registry.live.find_openrouter("meta-llama/llama-3.1-8b-instruct") is None
        assert found(registry, "openrouter", "meta-llama/llama-3.1-8b-instruct").source == "embedded"
    finally:
        gate.set()
    report = await task
    assert report.ok

    new_ids = sorted(r.id for r in registry.records())
    assert "meta-llama/llama-3.1-8b-instruct" in new_ids and "qwen2.5:7b" in new_ids
    assert prices(found(registry, "openrouter", "anthropic/claude-3.5-sonnet"))[0] == "2.5"
    # The table a reader held is untouched: a new one was swapped in.
    assert registry.live is not old_live
    assert [r.id for r in old_live.openrouter] == ["anthropic/claude-3.5-sonnet", "openai/gpt-4o-mini"]
    assert [r.id for r in old_live.local["ollama"]] == ["llama3:latest"]
    assert old_live.find_openrouter("anthropic/claude-3.5-sonnet") is old_sonnet
    assert prices(old_sonnet)[0] == "3"
    with pytest.raises(TypeError):
        old_live.local["ollama"] = ()  # type: ignore[index]


# ---- failing sources -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fail", "reason"),
    [("500", "HTTP 500 from /api/v1/models"), ("garbage", "bad JSON"), ("shape", 'expected {"data": [...]}')],
)
async def test_a_failing_openrouter_keeps_its_data_while_ollama_updates(
    openrouter: Upstream, ollama: Upstream, caplog: pytest.LogCaptureFixture, fail: str, reason: str
) -> None:
    ollama.state["models"] = dict(list(ollama_registry_double.MODELS.items())[:2])
    registry = await refreshed(openrouter, ollama)
    kept = found(registry, "openrouter", "anthropic/claude-3.5-sonnet")

    openrouter.state["fail"] = fail
    ollama.state["models"] = ollama_registry_double.MODELS
    with caplog.at_level(logging.WARNING, logger="ratatoskr_server.registry.registry"):
        report = await registry.refresh(openrouter_url=url(openrouter), ollama={"ollama": ollama.base_url}, http=HTTP)

    failed, updated = report.source("openrouter"), report.source("ollama")
    assert not report.ok
    assert (failed.ok, failed.models) == (False, len(openrouter_double.MODELS))
    assert reason in failed.error
    assert (updated.ok, updated.models, updated.error) == (True, len(ollama_registry_double.MODELS), "")
    assert found(registry, "openrouter", "anthropic/claude-3.5-sonnet") is kept
    assert found(registry, "ollama", "qwen2.5:7b").context_window == 32_768
    assert any("openrouter" in r.getMessage() and reason in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("fail", "reason"), [("500", "HTTP 500 from /api/tags"), ("garbage", "bad JSON"), ("show-500", "/api/show")]
)
async def test_a_failing_ollama_keeps_its_data_while_openrouter_updates(
    openrouter: Upstream, ollama: Upstream, fail: str, reason: str
) -> None:
    registry = await refreshed(openrouter, ollama)
    kept = found(registry, "ollama", "llama3")

    ollama.state["fail"] = fail
    cheaper = copy.deepcopy(openrouter_double.MODELS)
    cheaper[1]["pricing"]["completion"] = "0.0000005"
    openrouter.state["models"] = cheaper
    report = await registry.refresh(openrouter_url=url(openrouter), ollama={"ollama": ollama.base_url}, http=HTTP)

    assert report.source("openrouter").ok
    failed = report.source("ollama")
    assert (failed.ok, failed.models) == (False, len(ollama_registry_double.MODELS))
    assert reason in failed.error
    assert found(registry, "ollama", "llama3") is kept
    assert prices(found(registry, "openrouter", "openai/gpt-4o-mini"))[1] == "0.5"

    # Once it answers again, the next refresh takes its data.
    ollama.state["fail"] = None
    report = await registry.refresh(openrouter_url=url(openrouter), ollama={"ollama": ollama.base_url}, http=HTTP)
    assert report.ok
    assert found(registry, "ollama", "llama3") is not kept


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        (HttpSettings(read_timeout_s=0.2), "timed out (ReadTimeout)"),
        (HttpSettings(read_timeout_s=5, total_timeout_s=0.2), "timed out after 0.2 s"),
    ],
)
async def test_a_slow_source_times_out_alone(
    openrouter: Upstream, ollama: Upstream, settings: HttpSettings, reason: str
) -> None:
    openrouter.state["fail"] = "slow"
    registry = ModelRegistry.embedded()
    report = await registry.refresh(openrouter_url=url(openrouter), ollama={"ollama": ollama.base_url}, http=settings)
    assert (report.source("openrouter").ok, report.source("openrouter").error) == (False, reason)
    assert report.source("ollama").ok
    assert registry.live.openrouter == ()
    assert found(registry, "ollama", "llama3").source == "live"


async def test_an_unreachable_source_is_reported_without_its_credentials(
    caplog: pytest.LogCaptureFixture, ollama: Upstream
) -> None:
    secret = "sk-or-v1-0123456789abcdef0123"
    port = ollama.base_url.rsplit(":", 1)[1]
    with caplog.at_level(logging.WARNING):
        report = await ModelRegistry.embedded().refresh(
            openrouter_url=f"http://user:{secret}@127.0.0.1:{port}/api/v1/models?key={secret}",
            ollama={},
            http=HTTP,
        )
    failed = report.source("openrouter")
    assert not failed.ok
    assert "404" in failed.error
    assert secret not in failed.error
    assert secret not in caplog.text


async def test_malformed_entries_are_skipped_and_named(openrouter: Upstream, ollama: Upstream) -> None:
    entries: list[Any] = [*copy.deepcopy(openrouter_double.MODELS), {"name": "no id"}, "not an object"]
    entries[0]["context_length"] = "lots"  # a bad field alone does not drop a model: it is just unknown
    entries[0]["top_provider"]["context_length"] = None
    openrouter.state["models"] = entries
    registry = ModelRegistry.embedded()
    report = await registry.refresh(openrouter_url=url(openrouter), ollama={}, http=HTTP)
    source = report.source("openrouter")
    assert (source.ok, source.models) == (True, len(openrouter_double.MODELS))
    assert source.error == "skipped malformed entries: #5, #6"
    assert found(registry, "openrouter", "anthropic/claude-3.5-sonnet").context_window == 200_000  # catalogue's


async def test_sources_no_longer_configured_are_dropped(openrouter: Upstream, ollama: Upstream) -> None:
    registry = await refreshed(openrouter, ollama)
    report = await registry.refresh(openrouter_url=None, ollama={}, http=HTTP)
    assert report.sources == ()
    assert len(registry.live) == 0
    assert found(registry, "ollama", "llama3").source == "embedded"
