"""The OpenAI-compatible adapter against a protocol-faithful double on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import pytest
from pydantic import SecretStr

from ratatoskr_client import (
    InvalidArgument,
    OutOfRange,
    PermissionDenied,
    RatatoskrError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from ratatoskr_client.types import (
    ChatEvent,
    ChatOptions,
    ContentDelta,
    Done,
    Message,
    ReasoningDelta,
    ResponseFormat,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolChoice,
    ToolDefinition,
    UsageEvent,
)
from ratatoskr_server.config import HttpSettings, ProviderSettings
from ratatoskr_server.providers.openai_compat import OpenAICompatProvider
from ratatoskr_server.providers.scrub import REDACTED, Scrubber, scrub_events
from ratatoskr_server.redact import MASK
from tests.conftest import free_port
from tests.upstreams import openai_double
from tests.upstreams.harness import Upstream, serve

KEY = "sk-test-0123456789abcdefghijklmnopqrstuv"
ECHO = openai_double.ECHO_HEADER
#: Not shaped like any key: only being configured can get it masked.
ECHO_KEY = "echo-passphrase-not-key-shaped-0042"
HELLO = [Message("system", "Be brief."), Message("user", "Say hello")]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as up:
        yield up


@pytest.fixture
async def provider(upstream: Upstream) -> AsyncIterator[OpenAICompatProvider]:
    settings = ProviderSettings(
        kind="openai_compat",
        base_url=f"{upstream.base_url}/v1",
        api_key=SecretStr(KEY),
        # The double quotes the whole key in its 401 body, so "the key is not in the message" can fail.
        headers={"HTTP-Referer": "https://example.test", "X-Title": "ratatoskr-tests", ECHO: "error"},
    )
    p = OpenAICompatProvider("openai", settings, HttpSettings())
    yield p
    await p.aclose()


@pytest.fixture
async def echoing(upstream: Upstream) -> AsyncIterator[OpenAICompatProvider]:
    """A provider whose upstream echoes the key in answers and model ids, not only in errors."""
    settings = ProviderSettings(
        kind="openai_compat",
        base_url=f"{upstream.base_url}/v1",
        api_key=SecretStr(ECHO_KEY),
        headers={ECHO: "error,answer,models"},
    )
    p = OpenAICompatProvider("echo", settings, HttpSettings())
    yield p
    await p.aclose()


async def _collect(stream: AsyncIterator[ChatEvent]) -> list[ChatEvent]:
    return [event async for event in stream]


async def test_text_stream_is_reassembled_exactly(provider: OpenAICompatProvider, upstream: Upstream) -> None:
    events = await _collect(provider.chat_stream("gpt-test", HELLO, ChatOptions()))
    text = "".join(e.text for e in events if isinstance(e, ContentDelta))
    assert text == openai_double.assembled_text()
    assert all(e.text for e in events if isinstance(e, ContentDelta))  # empty deltas carry nothing: dropped
    assert [e.text for e in events if isinstance(e, ReasoningDelta)] == ["thinking..."]
    usage = next(e.usage for e in events if isinstance(e, UsageEvent))
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (12, 7, 19)
    assert (usage.cached_tokens, usage.reasoning_tokens) == (4, 2)
    assert events[-1] == Done(finish_reason="stop")
    sent = upstream.requests[-1]
    assert sent.body["stream"] is True and sent.body["stream_options"] == {"include_usage": True}
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.headers["X-Title"] == "ratatoskr-tests" and sent.headers["HTTP-Referer"] == "https://example.test"
    assert sent.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello"},
    ]

    unary = await provider.chat("gpt-test", HELLO, ChatOptions())
    assert unary.message.content == text and unary.finish_reason == "stop" and unary.usage == usage


async def test_tool_call_fragments_assemble_by_index(provider: OpenAICompatProvider) -> None:
    events = await _collect(provider.chat_stream("tools", HELLO, ChatOptions()))
    calls = [e for e in events if isinstance(e, (ToolCallStart, ToolCallDelta, ToolCallEnd))]
    assert calls[0] == ToolCallStart(0, "call_a", "weather")
    args0 = "".join(e.arguments for e in calls if isinstance(e, ToolCallDelta) and e.index == 0)
    args1 = "".join(e.arguments for e in calls if isinstance(e, ToolCallDelta) and e.index == 1)
    assert json.loads(args0) == openai_double.tool_arguments() and json.loads(args1) == {"tz": "CET"}
    assert ToolCallStart(1, "call_b", "time") in calls
    assert calls[-2:] == [ToolCallEnd(0), ToolCallEnd(1)]
    assert events[-1] == Done(finish_reason="tool_calls")
    unary = await provider.chat("tools", HELLO, ChatOptions())
    assert unary.message.tool_calls == [ToolCall("call_a", "weather", "".join(openai_double.TOOL_ARGS))]
    assert unary.finish_reason == "tool_calls"


async def test_options_become_the_documented_request_fields(provider: OpenAICompatProvider, upstream: Upstream) -> None:
    options = ChatOptions(
        temperature=0.2,
        max_tokens=64,
        top_p=0.9,
        seed=7,
        stop=["END"],
        tools=[ToolDefinition("weather", "Weather for a city", {"type": "object", "properties": {"city": {}}})],
        tool_choice=ToolChoice("function", "weather"),
        response_format=ResponseFormat("json_schema", "answer", {"type": "object"}, strict=True),
        parallel_tool_calls=False,
        raw_provider_options={"user": "tenant-42", "logprobs": True},
    )
    history = [
        *HELLO,
        Message("assistant", tool_calls=[ToolCall("call_a", "weather", '{"city": "Oslo"}')]),
        Message("tool", '{"temp": -3}', tool_call_id="call_a"),
    ]
    await provider.chat("gpt-test", history, options)
    body = upstream.requests[-1].body
    assert body["model"] == "gpt-test" and "stream" not in body
    assert (body["temperature"], body["max_tokens"], body["top_p"], body["seed"], body["stop"]) == (
        0.2,
        64,
        0.9,
        7,
        ["END"],
    )
    assert body["tools"][0] == {
        "type": "function",
        "function": {"name": "weather", "description": "Weather for a city", "parameters": options.tools[0].parameters},
    }
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
    }
    assert body["parallel_tool_calls"] is False and body["user"] == "tenant-42" and body["logprobs"] is True
    assert body["messages"][2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
        ],
    }
    assert body["messages"][3] == {"role": "tool", "content": '{"temp": -3}', "tool_call_id": "call_a"}
    await provider.chat("gpt-test", HELLO, ChatOptions())
    assert set(upstream.requests[-1].body) == {"model", "messages"}  # nothing invented


@pytest.mark.parametrize(
    ("model", "error", "fragment"),
    [
        ("rate-limited", ResourceExhausted, "Rate limit"),
        ("auth", Unauthenticated, "Incorrect API key"),
        ("bad-request", InvalidArgument, "must be a list"),
        ("too-long", OutOfRange, "maximum context length"),
        ("filtered", PermissionDenied, "filtered"),
        ("server-error", Unavailable, "server had an error"),
        ("unavailable", Unavailable, "overloaded"),
    ],
)
async def test_every_error_class_is_mapped(
    provider: OpenAICompatProvider, model: str, error: type[RatatoskrError], fragment: str
) -> None:
    for call in (
        lambda: provider.chat(model, HELLO, ChatOptions()),
        lambda: _collect(provider.chat_stream(model, HELLO, ChatOptions())),
    ):
        with pytest.raises(error) as info:
            await call()
        assert info.value.message.startswith("openai: ") and fragment in info.value.message
        assert KEY not in info.value.message
        if model == "auth":  # the double echoed the key whole: the mapping masked it
            assert info.value.message == f"openai: Incorrect API key provided: {MASK}."
        if model == "rate-limited":
            assert info.value.retry_after_s == 3.0


async def test_failures_after_the_stream_started_are_raised(provider: OpenAICompatProvider) -> None:
    for model, fragment in (("midstream-error", "worker crashed"), ("cut", "ended before")):
        seen: list[ChatEvent] = []
        with pytest.raises(Unavailable, match=fragment):
            async for event in provider.chat_stream(model, HELLO, ChatOptions()):
                seen.append(event)
        assert any(isinstance(e, ContentDelta) for e in seen)  # it had started
        assert not any(isinstance(e, Done) for e in seen)  # and never pretended to finish


async def test_cancel_closes_the_upstream_connection(provider: OpenAICompatProvider, upstream: Upstream) -> None:
    upstream.streaming.clear()
    upstream.disconnected.clear()
    received: list[ChatEvent] = []
    underway = asyncio.Event()

    async def consume() -> None:
        async for event in provider.chat_stream("slow", HELLO, ChatOptions()):
            received.append(event)
            if len(received) >= 3:
                underway.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(underway.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(upstream.disconnected.wait, 5)


async def test_unreachable_upstream_is_unavailable() -> None:
    port = free_port()  # closed again: nobody listens there
    p = OpenAICompatProvider(
        "vllm", ProviderSettings(kind="openai_compat", base_url=f"http://127.0.0.1:{port}/v1"), HttpSettings()
    )
    try:
        with pytest.raises(Unavailable, match=f"vllm: cannot connect to http://127.0.0.1:{port}"):
            await p.chat("m", HELLO, ChatOptions())
    finally:
        await p.aclose()


async def test_generate_embed_and_models(provider: OpenAICompatProvider) -> None:
    result = await provider.generate("gpt-test", "Tell me a story", ChatOptions(max_tokens=4))
    assert result.text == "Once upon a time" and result.finish_reason == "length"
    events = await _collect(provider.generate_stream("gpt-test", "Tell me a story", ChatOptions()))
    assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == "Once upon a time"
    assert events[-1] == Done(finish_reason="length")
    vectors = await provider.embed_vectors("emb", ["a", "bbb"])
    assert vectors == [[1.0, 0.5, -0.25], [3.0, 0.5, -0.25]]  # by index, not by arrival
    assert await provider.list_models() == ["gpt-test", "tools"]


async def test_azure_style_deployment_urls(upstream: Upstream) -> None:
    with serve(openai_double.routes("/openai/deployments/gpt4o")) as azure:
        settings = ProviderSettings(
            kind="openai_compat",
            base_url=f"{azure.base_url}/openai/deployments/{{model}}",
            api_key=SecretStr("azure-key-0123456789"),
            api_key_header="api-key",
            query={"api-version": "2024-10-21"},
        )
        p = OpenAICompatProvider("azure", settings, HttpSettings())
        try:
            result = await p.chat("gpt4o", HELLO, ChatOptions())
        finally:
            await p.aclose()
        sent = azure.requests[-1]
    assert result.message.content == openai_double.assembled_text()
    assert sent.headers["api-key"] == "azure-key-0123456789" and "Authorization" not in sent.headers
    assert sent.query == {"api-version": "2024-10-21"} and "model" not in sent.body


async def test_an_echoed_key_reaches_the_provider_and_the_scrubber_removes_it(
    echoing: OpenAICompatProvider, upstream: Upstream
) -> None:
    """The adapter passes upstream text through as is; ``Scrubber`` is what keeps the key from a client.

    The raw assertions prove the double really echoes (so the scrubbed ones can fail); the gateway
    applies the same scrubber (see test_chat.py for the daemon end to end).
    """
    scrubber = Scrubber(echoing.secrets)

    raw = await echoing.chat("gpt-test", HELLO, ChatOptions())
    assert ECHO_KEY in raw.message.content and ECHO_KEY in raw.reasoning and ECHO_KEY in raw.model
    clean = scrubber.chat_result(raw)
    assert clean.message.content == f"{openai_double.assembled_text()} Your key is {REDACTED}."
    assert clean.reasoning == f"thinking... Your key is {REDACTED}." and clean.model == f"gpt-test:{REDACTED}"

    raw_events = await _collect(echoing.chat_stream("gpt-test", HELLO, ChatOptions()))
    assert not any(ECHO_KEY in repr(e) for e in raw_events)  # never whole in one delta: split across chunks
    assert ECHO_KEY in "".join(e.text for e in raw_events if isinstance(e, ContentDelta))
    events = await _collect(scrub_events(echoing.chat_stream("gpt-test", HELLO, ChatOptions()), scrubber))
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert content == f"{openai_double.assembled_text()} Your key is {REDACTED}."
    assert reasoning == f"thinking... Your key is {REDACTED}."
    assert [e for e in events if not isinstance(e, (ContentDelta, ReasoningDelta))] == [
        e for e in raw_events if not isinstance(e, (ContentDelta, ReasoningDelta))
    ]

    generated = await echoing.generate("gpt-test", "Tell me", ChatOptions())
    assert ECHO_KEY in generated.text
    assert scrubber.generate_result(generated).text == f"Once upon a time Your key is {REDACTED}."

    listed = await echoing.list_models()
    assert f"ft:{ECHO_KEY}" in listed
    assert scrubber.model_ids(listed) == ["ft:" + REDACTED, "gpt-test", "tools"]

    with pytest.raises(Unauthenticated) as info:
        await echoing.chat("auth", HELLO, ChatOptions())
    assert info.value.message == f"echo: Incorrect API key provided: {MASK}."  # errors: masked at the source
