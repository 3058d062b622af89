"""The embedded model catalogue and how the registry resolves a model name, without any network.

The catalogue is data, so these tests pin its facts (the seed table
exactly, prices as Decimals), prove that the schema rejects a broken file
with the record and field named, and walk lookup's resolution order:
live before embedded, then exact id, alias, vendor-stripped name, longest
prefix.
"""

from __future__ import annotations

import json
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ratatoskr_server.registry import (
    KNOWN_PARAMETERS,
    CatalogueError,
    ModelRecord,
    ModelRegistry,
    ParameterSpec,
    Pricing,
)
from ratatoskr_server.registry import registry as registry_module


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry.embedded()


def record(registry: ModelRegistry, model: str) -> ModelRecord:
    found = registry.lookup("any", model)
    assert found is not None, model
    return found


# ---- the packaged catalogue -------------------------------------------------------------------------


#: id, context window, max output (None: not part of the seed table), USD per million in, out.
SEED_TABLE = [
    ("gpt-4-turbo", 128_000, None, "10", "30"),
    ("gpt-4", 8_192, None, "30", "60"),
    ("gpt-3.5-turbo", 16_385, None, "0.5", "1.5"),
    ("claude-3-opus", 200_000, 4_096, "15", "75"),
    ("claude-3-sonnet", 200_000, 4_096, "3", "15"),
    ("claude-3-haiku", 200_000, 4_096, "0.25", "1.25"),
    ("all-minilm-l6-v2", 256, None, "0", "0"),
    ("smollm2-135m", 8_192, None, "0", "0"),
]


@pytest.mark.parametrize(("model", "context", "max_output", "price_in", "price_out"), SEED_TABLE)
def test_seed_table_facts_exactly(
    registry: ModelRegistry, model: str, context: int, max_output: int | None, price_in: str, price_out: str
) -> None:
    found = record(registry, model)
    assert found.id == model
    assert found.source == "embedded"
    assert found.context_window == context
    if max_output is not None:
        assert found.max_output_tokens == max_output
    assert found.pricing is not None
    assert found.pricing.input_per_million == Decimal(price_in)
    assert found.pricing.output_per_million == Decimal(price_out)
    # Canonical Decimals print like the price a person would write.
    assert str(found.pricing.input_per_million) == price_in
    assert str(found.pricing.output_per_million) == price_out


@pytest.mark.parametrize(
    ("model", "identity", "context"),
    [
        ("llama3", "llama-3-8b", 8_192),
        ("llama-3-8b", "llama-3-8b", 8_192),
        ("llama-3-70b", "llama-3-70b", 8_192),
        ("mixtral-8x7b", "mixtral-8x7b", 32_768),
    ],
)
def test_seed_open_models(registry: ModelRegistry, model: str, identity: str, context: int) -> None:
    found = record(registry, model)
    assert (found.id, found.context_window) == (identity, context)


def test_local_models_are_free_and_typed(registry: ModelRegistry) -> None:
    minilm, smollm = record(registry, "all-minilm-l6-v2"), record(registry, "smollm2-135m")
    assert minilm.tasks == ["embed"]
    assert minilm.tokenizer_family == "bert"
    assert smollm.tasks == ["chat"]
    for free in (minilm, smollm):
        assert free.pricing == Pricing.free()


def test_catalogue_file_is_data_with_string_prices() -> None:
    """The file holds prices as decimal strings (never JSON numbers, which readers parse as floats)."""
    raw = json.loads(resources.files("ratatoskr_server.registry").joinpath("catalogue.json").read_text("utf-8"))
    assert isinstance(raw, list)
    assert len(raw) >= 25
    for item in raw:
        for value in (item.get("pricing") or {}).values():
            assert isinstance(value, str), item["id"]


def test_every_chat_record_describes_every_parameter(registry: ModelRegistry) -> None:
    for found in registry.embedded_records:
        if "chat" in found.tasks:
            assert set(found.parameters) == set(KNOWN_PARAMETERS), found.id
        max_tokens = found.parameters.get("max_tokens")
        if max_tokens is not None and max_tokens.max is not None:
            assert max_tokens.max == found.max_output_tokens, found.id


def test_ids_and_aliases_are_unique_and_lower_case(registry: ModelRegistry) -> None:
    names = [name for found in registry.embedded_records for name in [found.id, *found.aliases]]
    assert len(names) == len({n.lower() for n in names})
    assert all(found.id == found.id.lower() for found in registry.embedded_records)


def test_provider_parameter_conventions(registry: ModelRegistry) -> None:
    gpt4o = record(registry, "gpt-4o")
    assert gpt4o.parameters["temperature"] == ParameterSpec(availability="mutable", min=0, max=2, default=1)
    assert gpt4o.parameters["top_k"].availability == "unsupported"
    assert gpt4o.parameters["max_tokens"].max == 16_384

    for reasoning_model in ("o1", "o3-mini"):
        found = record(registry, reasoning_model)
        assert found.parameters["temperature"].availability in ("read_only", "unsupported")
        assert found.parameters["reasoning"].availability == "mutable"

    for claude in ("claude-3-opus", "claude-3-sonnet", "claude-3-haiku", "claude-3.5-sonnet", "claude-3.7-sonnet"):
        found = record(registry, claude)
        assert (found.parameters["temperature"].min, found.parameters["temperature"].max) == (0, 1)
        assert found.parameters["top_k"].availability == "mutable"
        for absent in ("frequency_penalty", "presence_penalty", "seed"):
            assert found.parameters[absent].availability == "unsupported", (claude, absent)
        assert found.tokenizer_family == "claude"


def test_current_families_prices(registry: ModelRegistry) -> None:
    expected = {
        "gpt-4o": ("2.5", "10", "1.25", 128_000),
        "gpt-4o-mini": ("0.15", "0.6", "0.075", 128_000),
        "o3-mini": ("1.1", "4.4", "0.55", 200_000),
        "claude-3.5-sonnet": ("3", "15", "0.3", 200_000),
        "claude-3.5-haiku": ("0.8", "4", "0.08", 200_000),
    }
    for model, (price_in, price_out, cached, context) in expected.items():
        found = record(registry, model)
        assert found.pricing is not None
        prices = (
            found.pricing.input_per_million,
            found.pricing.output_per_million,
            found.pricing.cached_input_per_million,
        )
        assert tuple(str(p) for p in prices) == (price_in, price_out, cached), model
        assert found.context_window == context


# ---- the schema and broken catalogues -------------------------------------------------------------

GOOD: dict[str, Any] = {
    "id": "good-model",
    "context_window": 4096,
    "max_output_tokens": 1024,
    "pricing": {"input_per_million": "1", "output_per_million": "2"},
    "parameters": {"temperature": {"availability": "mutable", "min": 0, "max": 2, "default": 1}},
}


def write_catalogue(tmp_path: Path, *records: dict[str, Any]) -> Path:
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps(list(records)), encoding="utf-8")
    return path


def test_a_custom_catalogue_file_loads(tmp_path: Path) -> None:
    registry = ModelRegistry.from_file(write_catalogue(tmp_path, GOOD))
    found = registry.lookup("x", "good-model")
    assert found is not None
    assert found.pricing == Pricing(input_per_million=Decimal(1), output_per_million=Decimal(2))


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (
            {"parameters": {"temperature": {"availability": "mutable", "min": 2, "max": 0}}},
            r"record 1 \('bad-model'\).*parameters\.temperature.*min 2\.0 is greater than max 0\.0",
        ),
        (
            {"parameters": {"top_p": {"availability": "sometimes"}}},
            r"record 1 \('bad-model'\).*parameters\.top_p\.availability",
        ),
        (
            {"pricing": {"input_per_million": "ten dollars", "output_per_million": "1"}},
            r"record 1 \('bad-model'\).*pricing\.input_per_million.*decimal",
        ),
        (
            {"pricing": {"input_per_million": 0.1, "output_per_million": "1"}},
            r"record 1 \('bad-model'\).*pricing\.input_per_million.*decimal strings",
        ),
        (
            {"pricing": {"input_per_million": "-1", "output_per_million": "1"}},
            r"record 1 \('bad-model'\).*pricing\.input_per_million.*negative",
        ),
        (
            {"parameters": {"temprature": {"availability": "opaque"}}},
            r"record 1 \('bad-model'\).*parameters.*unknown parameter\(s\) temprature",
        ),
        (
            {"parameters": {"temperature": {"availability": "opaque", "value": "1"}}},
            r"record 1 \('bad-model'\).*value applies only to read_only",
        ),
        (
            {"parameters": {"temperature": {"availability": "mutable", "min": 0, "max": 1, "default": 1.5}}},
            r"record 1 \('bad-model'\).*default 1\.5 is above max 1\.0",
        ),
        ({"context": 4096}, r"record 1 \('bad-model'\).*field context: Extra inputs are not permitted"),
        ({"aliases": ["good-model"]}, r"record 1 \('bad-model'\).*'good-model' is already used by record 'good-model'"),
    ],
)
def test_a_broken_catalogue_names_the_record_and_field(tmp_path: Path, broken: dict[str, Any], expected: str) -> None:
    path = write_catalogue(tmp_path, GOOD, {**GOOD, "id": "bad-model", **broken})
    with pytest.raises(CatalogueError, match=expected) as caught:
        ModelRegistry.from_file(path)
    assert str(path) in str(caught.value)


def test_a_catalogue_that_is_not_a_list_or_not_json(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"models": [GOOD]}), encoding="utf-8")
    with pytest.raises(CatalogueError, match="must be a JSON list"):
        ModelRegistry.from_file(path)
    path.write_text("[{", encoding="utf-8")
    with pytest.raises(CatalogueError, match="not valid JSON"):
        ModelRegistry.from_file(path)


def test_parameter_spec_rules() -> None:
    assert ParameterSpec(availability="read_only", value="1").value == "1"
    with pytest.raises(ValidationError, match="only to mutable"):
        ParameterSpec(availability="unsupported", max=1)
    with pytest.raises(ValidationError, match="below min"):
        ParameterSpec(availability="mutable", min=0, default=-1)
    with pytest.raises(ValidationError):
        ParameterSpec(availability="mutable", max=float("inf"))


def test_pricing_is_exact_and_canonical() -> None:
    price = Pricing.model_validate(
        {"input_per_million": "3.000000", "output_per_million": Decimal("3E+1"), "cached_input_per_million": "0.30"}
    )
    assert (str(price.input_per_million), str(price.output_per_million)) == ("3", "30")
    assert str(price.cached_input_per_million) == "0.3"
    with pytest.raises(ValidationError, match="not a float"):
        Pricing.model_validate({"input_per_million": 0.1, "output_per_million": "1"})


# ---- lookup -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "identity"),
    [
        # (c) exact id or alias, in any case
        ("gpt-4o", "gpt-4o"),
        ("claude-3-5-sonnet", "claude-3.5-sonnet"),
        ("GPT-4-Turbo", "gpt-4-turbo"),
        ("llama3:8b", "llama-3-8b"),
        # (d) vendor prefix stripped
        ("openai/gpt-4o", "gpt-4o"),
        ("anthropic/claude-3-haiku", "claude-3-haiku"),
        # (e) the longest id or alias the name extends
        ("gpt-4-turbo-2024-04-09", "gpt-4-turbo"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4-0125-preview", "gpt-4-turbo"),
        ("claude-3-opus-20240229", "claude-3-opus"),
        ("claude-3-5-sonnet-20241022", "claude-3.5-sonnet"),
        ("llama3:70b-instruct-q4_0", "llama-3-70b"),
        ("llama3:latest", "llama-3-8b"),
        ("llama3.1:latest", "llama-3.1-8b"),
        ("meta-llama/llama-3.1-8b-instruct", "llama-3.1-8b"),
        ("anthropic/claude-3.5-sonnet:beta", "claude-3.5-sonnet"),
        ("phi3:mini-128k", "phi-3-mini-128k"),
    ],
)
def test_lookup_resolves_embedded_names(registry: ModelRegistry, model: str, identity: str) -> None:
    assert record(registry, model).id == identity


@pytest.mark.parametrize("model", ["mistral-large", "gpt-4.1", "gpt-4o-audio-preview", "unknown-model", "", "  "])
def test_lookup_does_not_guess_other_models(registry: ModelRegistry, model: str) -> None:
    assert registry.lookup("openai", model) is None


def test_embedded_matches_are_remembered_within_a_bound(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "_MAX_MATCHED", 3)
    fresh = ModelRegistry(registry.embedded_records)
    names = ["gpt-4o", "selfhosted/unknown-model", "llama3:latest", "another-unknown", "gpt-4o"]
    answers = [fresh.match_embedded(name) for name in names]
    assert [a.id if a else None for a in answers] == ["gpt-4o", None, "llama-3-8b", None, "gpt-4o"]
    assert answers[0] is answers[4]
    assert len(fresh._matched) <= 3  # caller-chosen names cannot grow it without end


def live_record(ident: str, context: int, **fields: Any) -> ModelRecord:
    return ModelRecord(id=ident, context_window=context, source="live", **fields)


def test_live_records_come_before_embedded_ones() -> None:
    registry = ModelRegistry.embedded()
    ollama_llama = live_record("llama3:latest", 4_096, aliases=["llama3"], pricing=Pricing.free())
    openrouter_price = Pricing(input_per_million=Decimal(5), output_per_million=Decimal(15))
    openrouter_gpt = live_record("openai/gpt-4o", 128_000, pricing=openrouter_price)
    shadow = live_record("openai/gpt-4o", 1_000)  # a local server that happens to use an OpenRouter-style name
    registry.set_live(openrouter=[openrouter_gpt], local={"ollama": [ollama_llama], "box": [shadow]})

    # (a) the provider's own live records, with Ollama's implicit ":latest"
    assert registry.lookup("ollama", "llama3") is ollama_llama
    assert registry.lookup("ollama", "LLAMA3:latest") is ollama_llama
    # ... only for that provider: elsewhere "llama3" is still the catalogue's
    assert record(registry, "llama3").id == "llama-3-8b"
    # (a) before (b)
    assert registry.lookup("box", "openai/gpt-4o") is shadow
    # (b) OpenRouter's live record by exact id, whatever the provider
    assert registry.lookup("openrouter", "openai/gpt-4o") is openrouter_gpt
    assert registry.lookup("other", "openai/gpt-4o") is openrouter_gpt
    # (c)/(d) the catalogue still answers the bare name and any other vendor's spelling
    assert record(registry, "gpt-4o").source == "embedded"
    assert record(registry, "azure/gpt-4o").source == "embedded"


def test_records_merge_live_over_embedded() -> None:
    registry = ModelRegistry.embedded()
    before = registry.records()
    assert [r.id for r in before] == [r.id for r in registry.embedded_records]

    smollm = live_record("smollm2:135m", 8_192, pricing=Pricing.free())
    registry.set_live(local={"ollama": [smollm]})
    ids = [r.id for r in registry.records()]
    assert "smollm2:135m" in ids
    assert "smollm2-135m" not in ids  # the live record names it (the catalogue's alias), so it replaces it
    assert "gpt-4o" in ids and "all-minilm-l6-v2" in ids
    assert len(ids) == len(before)
    # What a caller took earlier is a snapshot: it did not change.
    assert "smollm2-135m" in [r.id for r in before]


def test_set_live_keeps_what_it_is_not_given() -> None:
    registry = ModelRegistry.embedded()
    registry.set_live(openrouter=[live_record("x/a", 1)], local={"ollama": [live_record("b:latest", 2)]})
    registry.set_live(openrouter=[live_record("x/c", 3)])
    assert [r.id for r in registry.live.openrouter] == ["x/c"]
    assert [r.id for r in registry.live.local["ollama"]] == ["b:latest"]
