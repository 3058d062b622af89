"""The Anthropic adapter against a protocol-faithful loopback double of the Messages API.

Proves the request it builds (the double rejects what the real API rejects),
that streams reassemble exactly into what the unary call returns, that every
upstream failure becomes the right domain error without leaking the key, and
that cancelling a stream closes the upstream connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from ratatoskr_client.errors import (
    InvalidArgument,
    NotFound,
    OutOfRange,
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
    ReasoningOptions,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolChoice,
    ToolDefinition,
    Usage,
    UsageEvent,
)
from ratatoskr_server.config import HttpSettings, ProviderSettings
from ratatoskr_server.providers.anthropic import AnthropicProvider
from ratatoskr_server.redact import MASK
from tests.conftest import free_port
from tests.upstreams import anthropic_double as double
from tests.upstreams.harness import Upstream, serve

KEY = "sk-ant-test-key-0123456789"
HELLO = [Message(role="user", content="Hi")]


def make_provider(base_url: str, **settings: Any) -> AnthropicProvider:
    return AnthropicProvider(
        name="anthropic",
        settings=ProviderSettings(kind="anthropic", base_url=base_url, api_key=SecretStr(KEY), **settings),
        http=HttpSettings(),
    )


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with serve(double.routes(api_key=KEY)) as up:
        yield up


@pytest.fixture
async def provider(upstream: Upstream) -> AsyncIterator[AnthropicProvider]:
    p = make_provider(f"{upstream.base_url}/v1")
    yield p
    await p.aclose()


async def collect(stream: AsyncIterator[ChatEvent]) -> list[ChatEvent]:
    return [event async for event in stream]


def text_of(events: list[ChatEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, ContentDelta))


def headers_of(upstream: Upstream) -> dict[str, str]:
    return {k.lower(): v for k, v in upstream.requests[-1].headers.items()}


def body_of(upstream: Upstream) -> dict[str, Any]:
    body: dict[str, Any] = upstream.requests[-1].body
    return body


# -- answers ----------------------------------------------------------------------------------------


async def test_text_stream_reassembles_exactly_and_matches_unary(provider: AnthropicProvider) -> None:
    events = await collect(provider.chat_stream("text", HELLO, ChatOptions()))
    assert [e.text for e in events if isinstance(e, ContentDelta)] == double.TEXT_PARTS
    # Input from message_start (fresh + cache reads), output from message_delta's cumulative count.
    usage = Usage(prompt_tokens=50, completion_tokens=17, total_tokens=67, cached_tokens=8)
    assert events[-2:] == [UsageEvent(usage), Done(finish_reason="stop")]

    result = await provider.chat("text", HELLO, ChatOptions())
    assert result.message == Message(role="assistant", content=double.TEXT)
    assert result.message.content == text_of(events)
    assert (result.finish_reason, result.usage, result.model, result.reasoning) == ("stop", usage, "text", "")


async def test_tool_use_stream_gives_start_fragments_end_per_call(provider: AnthropicProvider) -> None:
    events = await collect(provider.chat_stream("tools", HELLO, ChatOptions()))
    assert text_of(events) == "Let me check that."
    tool_events = [e for e in events if isinstance(e, ToolCallStart | ToolCallDelta | ToolCallEnd)]
    expected: list[ChatEvent] = []
    for ordinal, (call_id, name, fragments) in enumerate(double.TOOL_CALLS):
        expected.append(ToolCallStart(index=ordinal, id=call_id, name=name))
        expected += [ToolCallDelta(index=ordinal, arguments=f) for f in fragments if f]
        if not any(fragments):
            expected.append(ToolCallDelta(index=ordinal, arguments="{}"))  # no parameters: still valid JSON
        expected.append(ToolCallEnd(ordinal))
    assert tool_events == expected
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "tool_calls"

    streamed = {
        i: "".join(e.arguments for e in events if isinstance(e, ToolCallDelta) and e.index == i)
        for i in range(len(double.TOOL_CALLS))
    }
    assert streamed[0] == '{"location": "Bergen, Norway", "unit": "celsius"}'
    assert streamed[1] == '{"tz": "Europe/Oslo"}'

    result = await provider.chat("tools", HELLO, ChatOptions())
    assert result.finish_reason == "tool_calls"
    assert result.message.content == "Let me check that."
    assert [(c.id, c.name) for c in result.message.tool_calls] == [(i, n) for i, n, _ in double.TOOL_CALLS]
    assert [json.loads(c.arguments) for c in result.message.tool_calls] == [json.loads(a) for a in streamed.values()]


async def test_thinking_streams_as_reasoning_unless_excluded(provider: AnthropicProvider, upstream: Upstream) -> None:
    options = ChatOptions(reasoning=ReasoningOptions(effort="low"))
    events = await collect(provider.chat_stream("thinking", HELLO, options))
    assert [e.text for e in events if isinstance(e, ReasoningDelta)] == double.THINKING_PARTS
    assert text_of(events) == "".join(double.THINKING_TEXT_PARTS)
    assert body_of(upstream)["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body_of(upstream)["max_tokens"] == 4096 + 2048  # the budget counts against max_tokens

    hidden = ChatOptions(reasoning=ReasoningOptions(effort="low", exclude=True))
    events = await collect(provider.chat_stream("thinking", HELLO, hidden))
    assert not [e for e in events if isinstance(e, ReasoningDelta)]
    assert text_of(events) == "".join(double.THINKING_TEXT_PARTS)
    assert "thinking" in body_of(upstream)  # excluded from the answer, still asked for

    result = await provider.chat("thinking", HELLO, options)
    assert result.reasoning == "".join(double.THINKING_PARTS)
    assert result.message.content == "".join(double.THINKING_TEXT_PARTS)
    assert (await provider.chat("thinking", HELLO, hidden)).reasoning == ""


@pytest.mark.parametrize(
    ("model", "reason"), [("length", "length"), ("stop-sequence", "stop"), ("refusal", "content_filter")]
)
async def test_stop_reasons_map_to_finish_reasons(provider: AnthropicProvider, model: str, reason: str) -> None:
    events = await collect(provider.chat_stream(model, HELLO, ChatOptions(stop=["END"])))
    assert events[-1] == Done(finish_reason=reason)
    assert (await provider.chat(model, HELLO, ChatOptions(stop=["END"]))).finish_reason == reason


# -- the request ------------------------------------------------------------------------------------


async def test_request_body_headers_and_conversation_mapping(provider: AnthropicProvider, upstream: Upstream) -> None:
    weather = ToolCall(id="toolu_1", name="get_weather", arguments='{"location": "Bergen"}')
    clock = ToolCall(id="toolu_2", name="get_time", arguments="")
    messages = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="Weather and time in Bergen?"),
        Message(role="system", content="Use metric units."),
        Message(role="assistant", content="Checking.", tool_calls=[weather, clock]),
        Message(role="tool", content="12 °C, rain", tool_call_id="toolu_1"),
        Message(role="tool", content="14:05", tool_call_id="toolu_2"),
        Message(role="user", content="And tomorrow?"),
        Message(role="user", content="Short answer, please."),
    ]
    tools = [ToolDefinition(name="get_weather", description="Weather now", parameters={"type": "object"})]
    options = ChatOptions(temperature=0.2, top_p=0.9, top_k=40, stop=["\n\nHuman:"], tools=tools)
    result = await provider.chat("text", messages, options)  # the double validates alternation and tool results
    assert result.message.content == double.TEXT

    assert body_of(upstream) == {
        "model": "text",
        "system": "Be brief.\n\nUse metric units.",
        "max_tokens": 4096,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stop_sequences": ["\n\nHuman:"],
        "tools": [{"name": "get_weather", "description": "Weather now", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather and time in Bergen?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Bergen"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12 °C, rain"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "14:05"},
                    {"type": "text", "text": "And tomorrow?"},
                    {"type": "text", "text": "Short answer, please."},
                ],
            },
        ],
    }
    headers = headers_of(upstream)
    assert headers["x-api-key"] == KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers

    await collect(provider.chat_stream("text", messages, options))
    assert body_of(upstream)["stream"] is True


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        (ToolChoice(mode="auto"), {"type": "auto"}),
        (ToolChoice(mode="none"), {"type": "none"}),
        (ToolChoice(mode="required"), {"type": "any"}),
        (ToolChoice(mode="function", function="get_weather"), {"type": "tool", "name": "get_weather"}),
    ],
)
async def test_tool_choice_mapping(
    provider: AnthropicProvider, upstream: Upstream, choice: ToolChoice, wire: dict[str, str]
) -> None:
    options = ChatOptions(tools=[ToolDefinition(name="get_weather")], tool_choice=choice)
    await provider.chat("tools", HELLO, options)
    assert body_of(upstream)["tool_choice"] == wire
    assert body_of(upstream)["tools"] == [{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}]


@pytest.mark.parametrize(
    ("options", "max_tokens", "thinking"),
    [
        (ChatOptions(max_tokens=300), 300, None),
        (ChatOptions(reasoning=ReasoningOptions(max_tokens=5000)), 4096 + 5000, 5000),
        (ChatOptions(reasoning=ReasoningOptions(max_tokens=10)), 4096 + 1024, 1024),  # the API's minimum budget
        (ChatOptions(max_tokens=3000, reasoning=ReasoningOptions(effort="high")), 3000, 2999),  # caller's cap wins
        (ChatOptions(reasoning=ReasoningOptions(effort="none")), 4096, None),
        (ChatOptions(reasoning=ReasoningOptions(exclude=True)), 4096, None),
    ],
)
async def test_max_tokens_always_sent_and_thinking_fits_inside(
    provider: AnthropicProvider, upstream: Upstream, options: ChatOptions, max_tokens: int, thinking: int | None
) -> None:
    await provider.chat("text", HELLO, options)  # the double rejects a budget outside [1024, max_tokens)
    body = body_of(upstream)
    assert body["max_tokens"] == max_tokens
    assert body.get("thinking") == (None if thinking is None else {"type": "enabled", "budget_tokens": thinking})


async def test_raw_provider_options_are_merged_last(provider: AnthropicProvider, upstream: Upstream) -> None:
    raw = {"metadata": {"user_id": "u-42"}, "max_tokens": 77}
    await provider.chat("text", HELLO, ChatOptions(max_tokens=10, raw_provider_options=raw))
    assert body_of(upstream)["metadata"] == {"user_id": "u-42"}
    assert body_of(upstream)["max_tokens"] == 77


async def test_explicit_key_header_and_configured_headers_are_respected(upstream: Upstream) -> None:
    p = make_provider(
        f"{upstream.base_url}/v1",
        api_key_header="X-Gateway-Key",
        headers={"Anthropic-Version": "2024-01-01", "anthropic-beta": "prompt-caching-2024-07-31"},
    )
    try:
        with pytest.raises(Unauthenticated):  # the double wants x-api-key; the user asked for another header
            await p.chat("text", HELLO, ChatOptions())
    finally:
        await p.aclose()
    headers = headers_of(upstream)
    assert headers["x-gateway-key"] == KEY
    assert "x-api-key" not in headers
    assert headers["anthropic-version"] == "2024-01-01"
    assert headers["anthropic-beta"] == "prompt-caching-2024-07-31"


async def test_tool_arguments_that_are_not_an_object_fail_before_sending(
    provider: AnthropicProvider, upstream: Upstream
) -> None:
    history = [*HELLO, Message(role="assistant", tool_calls=[ToolCall(id="t1", name="f", arguments="[1, 2")])]
    with pytest.raises(InvalidArgument, match="anthropic"):
        await provider.chat("text", history, ChatOptions())
    with pytest.raises(InvalidArgument):
        provider.chat_stream("text", history, ChatOptions())
    assert upstream.requests == []


# -- failures ---------------------------------------------------------------------------------------


async def _fail(provider: AnthropicProvider, model: str, stream: bool) -> RatatoskrError:
    with pytest.raises(RatatoskrError) as info:
        if stream:
            await collect(provider.chat_stream(model, HELLO, ChatOptions()))
        else:
            await provider.chat(model, HELLO, ChatOptions())
    return info.value


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize(
    ("model", "error", "words"),
    [
        ("rate-limited", ResourceExhausted, "rate limit"),
        ("auth", Unauthenticated, "invalid x-api-key"),
        ("overloaded", Unavailable, "Overloaded"),
        ("too-long", OutOfRange, "prompt is too long"),
        ("no-such-model", NotFound, "model: no-such-model"),
    ],
)
async def test_http_errors_map_to_domain_errors(
    provider: AnthropicProvider, model: str, error: type[RatatoskrError], words: str, stream: bool
) -> None:
    err = await _fail(provider, model, stream)
    assert type(err) is error
    assert err.message.startswith("anthropic: ")
    assert words in err.message
    assert KEY not in err.message
    if model == "rate-limited":
        assert err.retry_after_s == 7.0
    if model == "auth":
        assert MASK in err.message  # the double echoed the key; the adapter scrubbed it


async def test_overloaded_error_event_after_200_raises_after_yielding(provider: AnthropicProvider) -> None:
    seen: list[ChatEvent] = []
    with pytest.raises(Unavailable) as info:
        async for event in provider.chat_stream("overloaded-midstream", HELLO, ChatOptions()):
            seen.append(event)
    assert text_of(seen) == "tick 0 tick 1 "
    assert not [e for e in seen if isinstance(e, Done)]
    assert info.value.message == "anthropic: Overloaded"


async def test_stream_without_message_stop_is_unavailable(provider: AnthropicProvider) -> None:
    seen: list[ChatEvent] = []
    with pytest.raises(Unavailable, match="anthropic: the stream ended"):
        async for event in provider.chat_stream("cut", HELLO, ChatOptions()):
            seen.append(event)
    assert text_of(seen) == "tick 0 tick 1 "
    assert not [e for e in seen if isinstance(e, Done)]


async def test_cancel_closes_the_upstream_stream(provider: AnthropicProvider, upstream: Upstream) -> None:
    received: list[ChatEvent] = []

    async def consume() -> None:
        async for event in provider.chat_stream("slow", HELLO, ChatOptions()):
            received.append(event)

    task = asyncio.create_task(consume())
    assert await asyncio.to_thread(upstream.streaming.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(upstream.disconnected.wait, 5) is True
    assert len(received) < 100  # it stopped early, not after the minute the double would stream


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_connection_refused_is_unavailable(stream: bool) -> None:
    port = free_port()
    p = make_provider(f"http://127.0.0.1:{port}/v1")
    try:
        err = await _fail(p, "text", stream)
    finally:
        await p.aclose()
    assert isinstance(err, Unavailable)
    assert err.message.startswith("anthropic: cannot connect")
    assert KEY not in err.message


# -- models and the double itself -------------------------------------------------------------------


async def test_list_models_follows_pages_and_adds_configured_ones() -> None:
    with serve(double.routes(api_key=KEY, max_limit=2)) as up:
        p = make_provider(f"{up.base_url}/v1", models=["claude-custom"])
        try:
            names = await p.list_models()
        finally:
            await p.aclose()
    assert names == sorted({*double.DEFAULT_MODELS, "claude-custom"})
    assert len([r for r in up.requests if r.path == "/v1/models"]) == 3  # six models, two a page


async def test_list_models_falls_back_to_configured_on_404() -> None:
    with serve(double.routes(api_key=KEY, list_models=False)) as up:
        p = make_provider(f"{up.base_url}/v1", models=["claude-a", "claude-b"])
        try:
            assert await p.list_models() == ["claude-a", "claude-b"]
        finally:
            await p.aclose()


async def test_double_rejects_what_the_api_rejects(upstream: Upstream) -> None:
    """The double is only worth trusting if it fails the requests the real API fails."""
    url = f"{upstream.base_url}/v1/messages"
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    user = {"role": "user", "content": "Hi"}
    async with httpx.AsyncClient() as client:
        r = await client.post(url, headers=headers, json={"model": "text", "messages": [user]})
        assert r.status_code == 400
        assert r.json()["type"] == "error"
        assert r.json()["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}

        r = await client.post(url, headers={"x-api-key": KEY}, json={"model": "text", "max_tokens": 5, "messages": []})
        assert (r.status_code, r.json()["error"]["type"]) == (400, "invalid_request_error")
        r = await client.post(url, headers={"anthropic-version": "2023-06-01"}, json={})
        assert (r.status_code, r.json()["error"]["type"]) == (401, "authentication_error")

        for messages in ([user, user], [{"role": "system", "content": "x"}, user]):
            r = await client.post(url, headers=headers, json={"model": "text", "max_tokens": 5, "messages": messages})
            assert (r.status_code, r.json()["error"]["type"]) == (400, "invalid_request_error")
