"""The Ollama adapter against a protocol-faithful double of Ollama's native API on 127.0.0.1.

Proves the wire format both ways (what the adapter sends, how it reads NDJSON
streams and unary answers) and the failures a local Ollama user actually
meets: the server not started, a model never pulled, a stream that errors or
stops half-way, and a cancel that must close the upstream connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from ratatoskr_client.errors import NotFound, RatatoskrError, Unavailable
from ratatoskr_client.types import (
    ChatEvent,
    ChatOptions,
    ContentDelta,
    Done,
    Message,
    ReasoningDelta,
    ReasoningOptions,
    ResponseFormat,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolDefinition,
    Usage,
    UsageEvent,
)
from ratatoskr_server.config import HttpSettings, ProviderSettings
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.providers.ollama import OllamaProvider
from tests.conftest import free_port
from tests.upstreams import ollama_double
from tests.upstreams.harness import Upstream, serve
from tests.upstreams.ollama_double import MIDSTREAM_ERROR, PROMPT_EVAL_COUNT, TEXT, THINKING, TOOL_CALL, WORDS

HELLO = [Message(role="user", content="Say a pangram.")]
WEATHER = ToolDefinition(
    name="get_weather",
    description="Current weather for a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def make_provider(base_url: str) -> OllamaProvider:
    settings = ProviderSettings(kind="ollama", base_url=base_url, local=True)
    return OllamaProvider(name="ollama", settings=settings, http=HttpSettings())


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with serve(ollama_double.routes()) as up:
        yield up


@pytest.fixture
async def provider(upstream: Upstream) -> AsyncIterator[OllamaProvider]:
    p = make_provider(upstream.base_url)
    try:
        yield p
    finally:
        await p.aclose()


async def collect(events: AsyncIterator[ChatEvent]) -> list[ChatEvent]:
    return [e async for e in events]


def text_of(events: list[ChatEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, ContentDelta))


def finish(events: list[ChatEvent]) -> str:
    """The finish reason of a stream, which must end with exactly one Done."""
    assert isinstance(events[-1], Done)
    assert sum(isinstance(e, Done) for e in events) == 1
    return events[-1].finish_reason


def last_body(upstream: Upstream, path: str) -> dict[str, Any]:
    bodies = [r.body for r in upstream.requests if r.path == path]
    assert bodies, f"nothing was sent to {path}"
    body: dict[str, Any] = bodies[-1]
    return body


def test_declares_what_the_native_api_carries() -> None:
    assert OllamaProvider.kind == "ollama"
    assert OllamaProvider.capabilities == {Capability.CHAT, Capability.GENERATE, Capability.EMBED}
    assert "tool_choice" not in OllamaProvider.supported_parameters  # Ollama has no way to force a tool
    assert {"max_tokens", "stop", "seed", "tools", "response_format", "reasoning"} <= (
        OllamaProvider.supported_parameters
    )


async def test_text_stream_is_reassembled_exactly(provider: OllamaProvider, upstream: Upstream) -> None:
    events = await collect(provider.chat_stream("llama3", HELLO, ChatOptions()))
    deltas = [e for e in events if isinstance(e, ContentDelta)]
    assert [d.text for d in deltas] == WORDS  # word by word, the empty final line adds nothing
    assert text_of(events) == TEXT
    assert finish(events) == "stop"
    body = last_body(upstream, "/api/chat")
    assert body["stream"] is True
    assert body["messages"] == [{"role": "user", "content": "Say a pangram."}]
    assert "options" not in body and "think" not in body and "format" not in body  # unset means the model's default


async def test_unary_equals_the_stream(provider: OllamaProvider, upstream: Upstream) -> None:
    streamed = text_of(await collect(provider.chat_stream("llama3", HELLO, ChatOptions())))
    result = await provider.chat("llama3", HELLO, ChatOptions())
    assert result.message == Message(role="assistant", content=streamed)
    assert result.finish_reason == "stop"
    assert result.model == "llama3"
    assert result.usage == Usage(prompt_tokens=PROMPT_EVAL_COUNT, completion_tokens=len(WORDS), total_tokens=35)
    assert last_body(upstream, "/api/chat")["stream"] is False


async def test_usage_and_timing_come_from_the_final_line(provider: OllamaProvider) -> None:
    events = await collect(provider.chat_stream("llama3", HELLO, ChatOptions()))
    usage = [e.usage for e in events if isinstance(e, UsageEvent)]
    assert usage == [Usage(prompt_tokens=PROMPT_EVAL_COUNT, completion_tokens=len(WORDS), total_tokens=35)]
    assert isinstance(events[-2], UsageEvent)  # usage just before Done, as every adapter sends it
    done = events[-1]
    assert isinstance(done, Done)
    assert done.timing.total_ms == pytest.approx(ollama_double.TOTAL_NS / 1e6)
    assert done.timing.inference_ms == pytest.approx((ollama_double.PROMPT_EVAL_NS + ollama_double.EVAL_NS) / 1e6)
    assert (done.timing.input_tokens, done.timing.output_tokens) == (PROMPT_EVAL_COUNT, len(WORDS))


async def test_max_tokens_becomes_num_predict_and_finish_length(provider: OllamaProvider, upstream: Upstream) -> None:
    options = ChatOptions(max_tokens=3, stop=["\n\n", "END"], seed=7, temperature=0.2, top_p=0.9, top_k=40)
    events = await collect(provider.chat_stream("llama3", HELLO, options))
    assert text_of(events) == "".join(WORDS[:3])
    assert finish(events) == "length"
    assert last_body(upstream, "/api/chat")["options"] == {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 7,
        "num_predict": 3,
        "stop": ["\n\n", "END"],
    }


async def test_raw_provider_options_merge_into_options(provider: OllamaProvider, upstream: Upstream) -> None:
    options = ChatOptions(seed=1, raw_provider_options={"options": {"num_ctx": 8192}, "keep_alive": "10m"})
    await provider.chat("llama3", HELLO, options)
    body = last_body(upstream, "/api/chat")
    assert body["options"] == {"seed": 1, "num_ctx": 8192}
    assert body["keep_alive"] == "10m"


async def test_whole_tool_call_becomes_start_delta_end(provider: OllamaProvider, upstream: Upstream) -> None:
    events = await collect(provider.chat_stream("tools", HELLO, ChatOptions(tools=[WEATHER])))
    arguments = json.dumps(TOOL_CALL["arguments"])
    assert events[:3] == [
        ToolCallStart(index=0, id="call_0", name="get_weather"),
        ToolCallDelta(index=0, arguments=arguments),
        ToolCallEnd(0),
    ]
    assert json.loads(arguments) == {"city": "Oslo", "unit": "celsius"}
    assert not [e for e in events if isinstance(e, ContentDelta)]
    assert finish(events) == "tool_calls"
    assert last_body(upstream, "/api/chat")["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": WEATHER.description, "parameters": WEATHER.parameters},
        }
    ]

    result = await provider.chat("tools", HELLO, ChatOptions(tools=[WEATHER]))
    assert result.finish_reason == "tool_calls"
    assert result.message.tool_calls == [ToolCall(id="call_0", name="get_weather", arguments=arguments)]


async def test_history_tool_calls_carry_arguments_as_an_object(provider: OllamaProvider, upstream: Upstream) -> None:
    history = [
        *HELLO,
        Message(
            role="assistant",
            tool_calls=[ToolCall(id="call_0", name="get_weather", arguments='{"city": "Oslo"}')],
        ),
        Message(role="tool", content='{"temp": 4}', tool_call_id="call_0"),
    ]
    await provider.chat("llama3", history, ChatOptions(tools=[WEATHER]))
    sent = last_body(upstream, "/api/chat")["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
    }
    assert sent[2] == {"role": "tool", "content": '{"temp": 4}', "tool_name": "get_weather"}


async def test_thinking_becomes_reasoning(provider: OllamaProvider, upstream: Upstream) -> None:
    options = ChatOptions(reasoning=ReasoningOptions(effort="medium"))
    events = await collect(provider.chat_stream("thinking", HELLO, options))
    assert last_body(upstream, "/api/chat")["think"] is True
    reasoning = [e for e in events if isinstance(e, ReasoningDelta)]
    assert "".join(e.text for e in reasoning) == THINKING
    first_text = next(i for i, e in enumerate(events) if isinstance(e, ContentDelta))
    assert events.index(reasoning[-1]) < first_text  # thinking comes first, then the answer
    assert text_of(events) == TEXT

    result = await provider.chat("thinking", HELLO, options)
    assert (result.reasoning, result.message.content) == (THINKING, TEXT)


async def test_excluded_reasoning_is_dropped(provider: OllamaProvider) -> None:
    options = ChatOptions(reasoning=ReasoningOptions(exclude=True))
    events = await collect(provider.chat_stream("thinking", HELLO, options))
    assert not [e for e in events if isinstance(e, ReasoningDelta)]
    assert text_of(events) == TEXT
    assert (await provider.chat("thinking", HELLO, options)).reasoning == ""


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        (ResponseFormat(type="json_object"), "json"),
        (
            ResponseFormat(type="json_schema", schema_name="pangram", json_schema={"type": "object", "required": []}),
            {"type": "object", "required": []},
        ),
    ],
)
async def test_response_format_becomes_format(
    provider: OllamaProvider, upstream: Upstream, response_format: ResponseFormat, expected: Any
) -> None:
    await provider.chat("llama3", HELLO, ChatOptions(response_format=response_format))
    assert last_body(upstream, "/api/chat")["format"] == expected


async def test_generate_unary_and_stream(provider: OllamaProvider, upstream: Upstream) -> None:
    result = await provider.generate("llama3", "The quick", ChatOptions(max_tokens=100))
    assert (result.text, result.finish_reason) == (TEXT, "stop")
    assert result.usage.completion_tokens == len(WORDS)
    body = last_body(upstream, "/api/generate")
    assert body == {"model": "llama3", "prompt": "The quick", "stream": False, "options": {"num_predict": 100}}

    events = await collect(provider.generate_stream("llama3", "The quick", ChatOptions()))
    assert [e.text for e in events if isinstance(e, ContentDelta)] == WORDS
    assert finish(events) == "stop"
    assert last_body(upstream, "/api/generate")["stream"] is True


async def test_embed(provider: OllamaProvider, upstream: Upstream) -> None:
    vectors = await provider.embed_vectors("nomic-embed-text", ["alpha", "beta gamma"])
    assert vectors == [ollama_double.vector("alpha"), ollama_double.vector("beta gamma")]
    assert last_body(upstream, "/api/embed") == {"model": "nomic-embed-text", "input": ["alpha", "beta gamma"]}


async def test_list_models_reads_tags(provider: OllamaProvider, upstream: Upstream) -> None:
    assert await provider.list_models() == sorted(ollama_double.TAGS)
    assert upstream.requests[-1].method == "GET" and upstream.requests[-1].path == "/api/tags"


async def test_not_running_says_so() -> None:
    base_url = f"http://127.0.0.1:{free_port()}"
    provider = make_provider(base_url)
    try:
        for call in (
            lambda: provider.chat("llama3", HELLO, ChatOptions()),
            lambda: collect(provider.chat_stream("llama3", HELLO, ChatOptions())),
            provider.list_models,
        ):
            with pytest.raises(Unavailable) as caught:
                await call()
            assert "not running" in caught.value.message
            assert base_url in caught.value.message
            assert "ollama serve" in caught.value.message
    finally:
        await provider.aclose()


async def test_unknown_model_says_how_to_pull_it(provider: OllamaProvider, upstream: Upstream) -> None:
    for call in (
        lambda: provider.chat("missing", HELLO, ChatOptions()),
        lambda: collect(provider.chat_stream("missing", HELLO, ChatOptions())),
        lambda: provider.embed_vectors("missing", ["x"]),
    ):
        with pytest.raises(NotFound) as caught:
            await call()
        assert "`ollama pull missing`" in caught.value.message
        assert 'model "missing" not found' in caught.value.message
    assert not [r for r in upstream.requests if r.path == "/api/pull"]  # never pulled for the caller


async def test_midstream_error_is_raised_after_earlier_events(provider: OllamaProvider) -> None:
    seen: list[ChatEvent] = []
    with pytest.raises(RatatoskrError) as caught:
        async for event in provider.chat_stream("midstream-error", HELLO, ChatOptions()):
            seen.append(event)
    assert seen == [ContentDelta(WORDS[0]), ContentDelta(WORDS[1])]
    assert MIDSTREAM_ERROR in caught.value.message
    assert caught.value.message.startswith("ollama: ")


async def test_stream_cut_before_done_is_unavailable(provider: OllamaProvider) -> None:
    seen: list[ChatEvent] = []
    with pytest.raises(Unavailable) as caught:
        async for event in provider.chat_stream("cut", HELLO, ChatOptions()):
            seen.append(event)
    assert seen == [ContentDelta(WORDS[0]), ContentDelta(WORDS[1])]  # no Done: a failed call, never a clean end
    assert "ended before the answer was complete" in caught.value.message


async def test_cancel_closes_the_upstream_connection(provider: OllamaProvider, upstream: Upstream) -> None:
    async def consume() -> None:
        async for _ in provider.chat_stream("slow", HELLO, ChatOptions()):
            pass

    task = asyncio.create_task(consume())
    assert await asyncio.to_thread(upstream.streaming.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(upstream.disconnected.wait, 5)
