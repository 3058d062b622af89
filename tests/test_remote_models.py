"""Embed and Classify route provider/model names to providers; local names stay in process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from ratatoskr_client import FailedPrecondition
from ratatoskr_client.types import ChatOptions
from ratatoskr_server.config import load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from tests.upstreams import huggingface_double, openai_double
from tests.upstreams.harness import Upstream, serve

TOKEN = "hf_remote0123456789abcdefgh"


@pytest.fixture(scope="module")
def hf() -> Iterator[Upstream]:
    with huggingface_double.huggingface_upstream() as up:
        yield up


@pytest.fixture(scope="module")
def oa() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as up:
        yield up


@pytest.fixture
async def gw(hf: Upstream, oa: Upstream) -> AsyncIterator[EmbeddedGateway]:
    settings = load_settings(
        local={"preload": [], "auto_import_default": False},
        providers={
            "hf": {"kind": "huggingface", "base_url": hf.base_url, "api_key": TOKEN},
            "openai": {"kind": "openai_compat", "base_url": f"{oa.base_url}/v1"},
        },
    )
    gateway = EmbeddedGateway(settings)
    yield gateway
    await gateway.close()


async def test_remote_zero_shot_and_embeddings(gw: EmbeddedGateway, hf: Upstream) -> None:
    labels = ["sports", "cooking", "finance"]
    result = await gw.classify("The striker scored twice", labels, model="hf/zs-new", multi_label=True)
    assert result.model == "hf/zs-new" and result.strategy == "nli"
    assert sorted(s.label for s in result.scores) == sorted(labels)
    assert [s.score for s in result.scores] == sorted((s.score for s in result.scores), reverse=True)
    assert hf.requests[-1].body["parameters"]["multi_label"] is True

    vectors = await gw.embed(["one", "two"], model="hf/sentence-model")
    assert vectors.model == "hf/sentence-model" and len(vectors.vectors) == 2
    assert vectors.dimension == len(vectors.vectors[0]) > 0
    openai_vectors = await gw.embed(["a", "bbb"], model="openai/emb")
    assert openai_vectors.vectors == [[1.0, 0.5, -0.25], [3.0, 0.5, -0.25]]


async def test_capabilities_are_checked_before_dispatch(gw: EmbeddedGateway) -> None:
    with pytest.raises(FailedPrecondition, match="does not offer classify"):
        await gw.classify("text", ["a", "b"], model="openai/gpt-test")
    with pytest.raises(FailedPrecondition, match="does not offer generate"):
        await gw.generate("prompt", ChatOptions(model="hf/any"))
