"""Parameters checked before dispatch (warn / error / ignore, ranges, remembered rejections), presets, metadata."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from ratatoskr_client import InvalidArgument, NotFound
from ratatoskr_client.types import ChatOptions, Message
from ratatoskr_server.config import load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from tests.upstreams import anthropic_double, openai_double
from tests.upstreams.harness import Upstream, serve

HELLO = [Message("user", "hi")]


@pytest.fixture(scope="module")
def oa() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as up:
        yield up


@pytest.fixture(scope="module")
def an() -> Iterator[Upstream]:
    with serve(anthropic_double.routes()) as up:
        yield up


def _gateway(oa: Upstream, an: Upstream, tmp: Any, **top: Any) -> EmbeddedGateway:
    providers = {
        "openai": {"kind": "openai_compat", "base_url": f"{oa.base_url}/v1", "parameter_policy": None},
        "strict": {"kind": "openai_compat", "base_url": f"{oa.base_url}/v1", "parameter_policy": "error"},
        "claude": {"kind": "anthropic", "base_url": f"{an.base_url}/v1", "api_key": "sk-ant-test-0123456789"},
    }
    return EmbeddedGateway(
        load_settings(
            local={"preload": [], "auto_import_default": False},
            providers=providers,
            registry={"cache_file": str(tmp / "registry.json")},
            presets={
                "ratatoskr:fast/chat": {
                    "model": "openai/gpt-4o",
                    "temperature": 0.2,
                    "max_tokens": 100,
                    "description": "quick answers",
                }
            },
            **top,
        )
    )


@pytest.fixture
async def gw(oa: Upstream, an: Upstream, tmp_path: Any) -> AsyncIterator[EmbeddedGateway]:
    gateway = _gateway(oa, an, tmp_path)
    yield gateway
    await gateway.close()


async def test_warn_drops_unsupported_parameters_and_says_so(gw: EmbeddedGateway, oa: Upstream) -> None:
    result = await gw.chat(HELLO, ChatOptions(model="openai/gpt-4o", top_k=40, temperature=0.5))
    body = oa.requests[-1].body
    assert "top_k" not in body and body["temperature"] == 0.5  # gpt-4o takes no top_k; temperature is fine
    assert result.notes.dropped_parameters == ["top_k"]


async def test_error_policy_refuses_naming_parameter_model_and_provider(gw: EmbeddedGateway, oa: Upstream) -> None:
    sent = len(oa.requests)
    with pytest.raises(InvalidArgument) as info:
        await gw.chat(HELLO, ChatOptions(model="strict/gpt-4o", top_k=40))
    assert "top_k" in info.value.message and "'gpt-4o'" in info.value.message and "'strict'" in info.value.message
    assert len(oa.requests) == sent  # refused before dispatch


async def test_ignore_policy_sends_parameters_as_given(oa: Upstream, an: Upstream, tmp_path: Any) -> None:
    gateway = _gateway(oa, an, tmp_path, parameters={"policy": "ignore"})
    try:
        await gateway.chat(HELLO, ChatOptions(model="openai/gpt-4o", top_k=40))
    finally:
        await gateway.close()
    assert oa.requests[-1].body["top_k"] == 40


async def test_out_of_range_values_name_the_allowed_range(gw: EmbeddedGateway) -> None:
    with pytest.raises(InvalidArgument, match=r"temperature=3 is out of range .* allowed 0\.\.2"):
        await gw.chat(HELLO, ChatOptions(model="openai/gpt-4o", temperature=3.0))
    with pytest.raises(InvalidArgument, match=r"temperature=1\.5 is out of range for model 'claude-3-haiku'.*0\.\.1"):
        await gw.chat(HELLO, ChatOptions(model="claude/claude-3-haiku", temperature=1.5))
    with pytest.raises(InvalidArgument, match=r"max_tokens=20000 is out of range .* allowed 1\.\.16384"):
        await gw.chat(HELLO, ChatOptions(model="openai/gpt-4o", max_tokens=20000))


async def test_read_only_parameters_accept_their_own_value(gw: EmbeddedGateway, oa: Upstream) -> None:
    await gw.chat(HELLO, ChatOptions(model="openai/o3-mini", temperature=1.0))
    assert oa.requests[-1].body["temperature"] == 1.0  # o3-mini's temperature is fixed at 1: fine
    await gw.chat(HELLO, ChatOptions(model="openai/o3-mini", temperature=0.3))
    assert "temperature" not in oa.requests[-1].body  # any other value is dropped (warn)


async def test_a_rejected_parameter_is_remembered(gw: EmbeddedGateway, oa: Upstream) -> None:
    with pytest.raises(InvalidArgument, match="seed"):
        await gw.chat(HELLO, ChatOptions(model="openai/no-seed", seed=7))
    result = await gw.chat(HELLO, ChatOptions(model="openai/no-seed", seed=7))  # seed now dropped up front
    assert "seed" not in oa.requests[-1].body and result.message.content
    meta = await gw.model_metadata("openai/no-seed")
    assert meta.parameters["seed"].availability == "unsupported"


async def test_presets_fill_only_what_the_caller_left_unset(gw: EmbeddedGateway, oa: Upstream) -> None:
    await gw.chat(HELLO, ChatOptions(model="ratatoskr:fast/chat", temperature=0.9))
    body = oa.requests[-1].body
    assert body["model"] == "gpt-4o" and body["temperature"] == 0.9 and body["max_tokens"] == 100
    await gw.chat(HELLO, ChatOptions(model="ratatoskr:fast/chat"))
    assert oa.requests[-1].body["temperature"] == 0.2


async def test_model_metadata_per_parameter_and_provider(gw: EmbeddedGateway) -> None:
    gpt = await gw.model_metadata("openai/gpt-4o")
    assert gpt.context_window == 128000 and gpt.max_output_tokens == 16384 and gpt.source == "embedded"
    assert gpt.pricing is not None and (gpt.pricing.input_per_million, gpt.pricing.output_per_million) == (2.5, 10.0)
    temperature = gpt.parameters["temperature"]
    assert (temperature.availability, temperature.min, temperature.max) == ("mutable", 0.0, 2.0)
    assert gpt.parameters["top_k"].availability == "unsupported"
    haiku = await gw.model_metadata("claude/claude-3-haiku-20240307")  # a dated snapshot finds its family
    assert haiku.context_window == 200000 and haiku.parameters["frequency_penalty"].availability == "unsupported"
    assert haiku.parameters["seed"].availability == "unsupported"  # the Anthropic wire format has no seed
    preset = await gw.model_metadata("ratatoskr:fast/chat")
    assert preset.info.id == "ratatoskr:fast/chat" and preset.info.description == "quick answers"
    assert preset.context_window == 128000
    with pytest.raises(NotFound, match="nothing-here"):
        await gw.model_metadata("local/nothing-here")
    with pytest.raises(NotFound):
        await gw.model_metadata("nowhere/model")
    listed = {m.info.id for m in await gw.list_models()}
    assert "ratatoskr:fast/chat" in listed and "openai/gpt-test" in listed


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"model": "gpt-4-32k"}, "raw_provider_options may not set model: the gateway builds it"),
        ({"messages": [], "stream": True}, "may not set messages, stream: the gateway builds them"),
        ({"tools": []}, "set tools through its own option"),
        ({"temperature": 3.0}, r"temperature=3 is out of range .* allowed 0\.\.2"),
        ({"max_completion_tokens": 20000}, r"max_tokens=20000 is out of range"),
        ({"max_tokens": "many"}, "raw_provider_options.max_tokens has the wrong type"),
        ({"logit_bias": {"50256": float("nan")}}, r"raw_provider_options.logit_bias.50256=nan is not a finite number"),
    ],
)
async def test_raw_provider_options_cannot_bypass_the_request_or_the_checks(
    gw: EmbeddedGateway, oa: Upstream, raw: dict[str, Any], match: str
) -> None:
    sent = len(oa.requests)
    with pytest.raises(InvalidArgument, match=match):
        await gw.chat(HELLO, ChatOptions(model="openai/gpt-4o", raw_provider_options=raw))
    assert len(oa.requests) == sent  # refused before dispatch


async def test_raw_typed_parameters_move_into_their_field(gw: EmbeddedGateway, oa: Upstream) -> None:
    await gw.chat(HELLO, ChatOptions(model="openai/gpt-4o", raw_provider_options={"temperature": 0.4, "user": "u1"}))
    body = oa.requests[-1].body
    assert body["temperature"] == 0.4 and body["user"] == "u1"
    with pytest.raises(InvalidArgument, match="set both as an option and in raw_provider_options"):
        await gw.chat(
            HELLO, ChatOptions(model="openai/gpt-4o", temperature=0.1, raw_provider_options={"temperature": 1})
        )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
async def test_non_finite_options_are_invalid_argument(gw: EmbeddedGateway, value: float) -> None:
    with pytest.raises(InvalidArgument, match="is not a finite number"):
        await gw.chat(HELLO, ChatOptions(model="openai/gpt-4o", top_p=value))
