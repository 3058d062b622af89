"""The Hugging Face adapter against a loopback double of the router: chat, embeddings, zero-shot, errors."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator

import pytest
from pydantic import SecretStr

from ratatoskr_client.errors import (
    InvalidArgument,
    NotFound,
    RatatoskrError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from ratatoskr_client.types import ChatOptions, ContentDelta, Done, Message, UsageEvent
from ratatoskr_server.config import HttpSettings, ProviderSettings
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.providers.huggingface import HuggingFaceProvider
from tests.upstreams.harness import Upstream
from tests.upstreams.huggingface_double import (
    LOADING_ESTIMATE_S,
    STREAM_PIECES,
    huggingface_upstream,
    sentence_vector,
    token_vector,
)

KEY = "hf_testtoken0123456789abcd"
HELLO = [Message(role="user", content="Say hello")]
LABELS = ["sports", "politics", "cooking"]
TEXT = "The chef seasoned the soup and tasted it twice."


def make_provider(base_url: str, **extra: object) -> HuggingFaceProvider:
    settings = ProviderSettings(kind="huggingface", base_url=base_url, api_key=SecretStr(KEY), **extra)  # type: ignore[arg-type]
    return HuggingFaceProvider(name="hf", settings=settings, http=HttpSettings())


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with huggingface_upstream() as up:
        yield up


@pytest.fixture
async def provider(upstream: Upstream) -> AsyncIterator[HuggingFaceProvider]:
    p = make_provider(upstream.base_url)
    try:
        yield p
    finally:
        await p.aclose()


def mean(rows: list[list[float]]) -> list[float]:
    return [sum(col) / len(rows) for col in zip(*rows, strict=True)]


# -- chat (inherited OpenAI-compatible logic on the router's /v1 URL) ----------------------------


async def test_chat_stream_reassembles_text_and_usage(provider: HuggingFaceProvider, upstream: Upstream) -> None:
    events = [e async for e in provider.chat_stream("meta-llama/Llama-3.1-8B-Instruct", HELLO, ChatOptions())]
    text = "".join(e.text for e in events if isinstance(e, ContentDelta))
    assert text == "".join(STREAM_PIECES) == "Hello world"
    usage = [e.usage for e in events if isinstance(e, UsageEvent)]
    assert len(usage) == 1
    assert (usage[0].prompt_tokens, usage[0].completion_tokens, usage[0].total_tokens) == (7, 3, 10)
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "stop"
    (seen,) = upstream.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    assert seen.body["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert seen.body["stream"] is True and seen.body["stream_options"] == {"include_usage": True}


async def test_chat_unary(provider: HuggingFaceProvider, upstream: Upstream) -> None:
    result = await provider.chat("meta-llama/Llama-3.1-8B-Instruct:cerebras", HELLO, ChatOptions(temperature=0.2))
    assert result.message.content == "Hello world"
    assert result.finish_reason == "stop"
    assert result.usage.total_tokens == 10
    assert upstream.requests[0].body["temperature"] == 0.2
    assert upstream.requests[0].body["model"] == "meta-llama/Llama-3.1-8B-Instruct:cerebras"


async def test_chat_validation_error_list_is_invalid_argument(provider: HuggingFaceProvider) -> None:
    with pytest.raises(InvalidArgument, match="messages"):
        await provider.chat("some/model", [], ChatOptions())


# -- embeddings ----------------------------------------------------------------------------------


async def test_embed_sentence_vectors(provider: HuggingFaceProvider, upstream: Upstream) -> None:
    inputs = ["first sentence here", "second one"]
    vectors = await provider.embed_vectors("sentence-transformers/all-MiniLM-L6-v2", inputs)
    assert vectors == [sentence_vector(t) for t in inputs]
    (seen,) = upstream.requests
    assert seen.path == "/hf-inference/models/sentence-transformers/all-MiniLM-L6-v2/pipeline/feature-extraction"
    assert seen.body == {"inputs": inputs}
    assert seen.headers["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("model", ["token-level", "token-level-3d"])
async def test_embed_token_level_answers_are_mean_pooled(provider: HuggingFaceProvider, model: str) -> None:
    inputs = ["alpha beta gamma", "delta"]
    vectors = await provider.embed_vectors(model, inputs)
    expected = [mean([token_vector(t) for t in text.split()]) for text in inputs]
    assert len(vectors) == 2
    for got, want in zip(vectors, expected, strict=True):
        assert got == pytest.approx(want)


async def test_embed_nothing_makes_no_request(provider: HuggingFaceProvider, upstream: Upstream) -> None:
    assert await provider.embed_vectors("any", []) == []
    assert upstream.requests == []


# -- zero-shot classification --------------------------------------------------------------------


@pytest.mark.parametrize("model", ["zs-new", "zs-legacy"])
@pytest.mark.parametrize("unsorted", [False, True])
async def test_classify_both_answer_shapes_sorted(
    provider: HuggingFaceProvider, upstream: Upstream, model: str, unsorted: bool
) -> None:
    upstream.state["unsorted"] = unsorted
    pairs = await provider.classify_scores(model, TEXT, LABELS)
    assert sorted(label for label, _ in pairs) == sorted(LABELS)
    scores = [score for _, score in pairs]
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) == len(scores)  # distinct, so the order is meaningful
    assert math.fsum(scores) == pytest.approx(1.0)
    (seen,) = upstream.requests
    assert seen.path == f"/hf-inference/models/{model}"
    assert seen.body == {"inputs": TEXT, "parameters": {"candidate_labels": LABELS, "multi_label": False}}


async def test_classify_shapes_agree(provider: HuggingFaceProvider) -> None:
    assert await provider.classify_scores("zs-new", TEXT, LABELS) == await provider.classify_scores(
        "zs-legacy", TEXT, LABELS
    )


async def test_classify_forwards_multi_label_and_template(provider: HuggingFaceProvider, upstream: Upstream) -> None:
    template = "This text is about {}."
    pairs = await provider.classify_scores("zs-new", TEXT, LABELS, multi_label=True, hypothesis_template=template)
    parameters = upstream.requests[0].body["parameters"]
    assert parameters == {"candidate_labels": LABELS, "multi_label": True, "hypothesis_template": template}
    # Independent per-label scores, as the upstream computes them for multi_label: no longer a distribution.
    assert math.fsum(score for _, score in pairs) != pytest.approx(1.0)


async def test_classify_without_labels_is_refused_locally(provider: HuggingFaceProvider, upstream: Upstream) -> None:
    with pytest.raises(InvalidArgument):
        await provider.classify_scores("zs-new", TEXT, [])
    assert upstream.requests == []


async def test_classify_unknown_model_is_not_found(provider: HuggingFaceProvider) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        await provider.classify_scores("nobody/nothing", TEXT, LABELS)


# -- errors --------------------------------------------------------------------------------------


async def _call(provider: HuggingFaceProvider, operation: str, model: str) -> object:
    if operation == "chat_stream":
        return [e async for e in provider.chat_stream(model, HELLO, ChatOptions())]
    if operation == "chat":
        return await provider.chat(model, HELLO, ChatOptions())
    if operation == "embed":
        return await provider.embed_vectors(model, ["hello"])
    return await provider.classify_scores(model, TEXT, LABELS)


OPERATIONS = ["chat_stream", "chat", "embed", "classify"]


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_loading_model_is_unavailable_with_estimate(provider: HuggingFaceProvider, operation: str) -> None:
    with pytest.raises(Unavailable, match="currently loading") as caught:
        await _call(provider, operation, "loading")
    assert caught.value.retry_after_s == LOADING_ESTIMATE_S == 20.0


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_other_503_keeps_the_generic_mapping(provider: HuggingFaceProvider, operation: str) -> None:
    with pytest.raises(Unavailable, match="Service Unavailable") as caught:
        await _call(provider, operation, "busy")
    assert caught.value.retry_after_s == 3.0  # from Retry-After: the loading hook let it through untouched


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_rejected_key_is_unauthenticated(provider: HuggingFaceProvider, operation: str) -> None:
    with pytest.raises(Unauthenticated, match="Invalid credentials") as caught:
        await _call(provider, operation, "auth")
    assert str(caught.value).startswith("hf: ")


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("model", ["auth-echo", "auth", "loading"])
async def test_key_never_in_error_messages(provider: HuggingFaceProvider, operation: str, model: str) -> None:
    with pytest.raises(RatatoskrError) as caught:
        await _call(provider, operation, model)
    for text in (str(caught.value), caught.value.message, repr(caught.value.args)):
        assert KEY not in text
        assert "hf_testtoken" not in text


async def test_missing_key_is_unauthenticated(upstream: Upstream) -> None:
    settings = ProviderSettings(kind="huggingface", base_url=upstream.base_url)
    p = HuggingFaceProvider(name="hf", settings=settings, http=HttpSettings())
    try:
        with pytest.raises(Unauthenticated):
            await p.embed_vectors("sentence-transformers/all-MiniLM-L6-v2", ["x"])
        assert "Authorization" not in upstream.requests[0].headers
    finally:
        await p.aclose()


async def test_nothing_listening_is_unavailable() -> None:
    with huggingface_upstream() as up:
        base = up.base_url
    p = make_provider(base)
    try:
        with pytest.raises(Unavailable, match="cannot connect"):
            await p.classify_scores("zs-new", TEXT, LABELS)
    finally:
        await p.aclose()


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base",
    [
        "https://router.huggingface.co",
        "https://router.huggingface.co/",
        "https://router.huggingface.co/v1",
        "https://router.huggingface.co/hf-inference",
    ],
)
async def test_url_layout_from_any_router_base(base: str) -> None:
    p = make_provider(base)
    try:
        assert p.url("/chat/completions", "m") == "https://router.huggingface.co/v1/chat/completions"
        assert (
            p.pipeline_url("BAAI/bge-small-en-v1.5", "feature-extraction")
            == "https://router.huggingface.co/hf-inference/models/BAAI/bge-small-en-v1.5/pipeline/feature-extraction"
        )
        assert p.pipeline_url("facebook/bart-large-mnli") == (
            "https://router.huggingface.co/hf-inference/models/facebook/bart-large-mnli"
        )
    finally:
        await p.aclose()


async def test_kind_capabilities_and_models(upstream: Upstream) -> None:
    p = make_provider(upstream.base_url, models=["zs-new", "meta-llama/Llama-3.1-8B-Instruct"])
    try:
        assert p.kind == "huggingface"
        assert p.capabilities == {Capability.CHAT, Capability.EMBED, Capability.CLASSIFY}
        assert await p.list_models() == ["zs-new", "meta-llama/Llama-3.1-8B-Instruct"]
        assert upstream.requests == []  # no listing call: the router has none worth making
        with pytest.raises(Unimplemented):
            await p.generate("m", "prompt", ChatOptions())
        with pytest.raises(Unimplemented):
            p.generate_stream("m", "prompt", ChatOptions())
    finally:
        await p.aclose()
