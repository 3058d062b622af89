"""Options and notes cross the gRPC wire as the caller and the gateway set them: unset stays unset,
a zero that was set stays a set zero, and the domain types come back as domain types."""

from __future__ import annotations

import pytest

from ratatoskr_client.convert import chat_options_from_pb, chat_options_to_pb, notes_from_pb, notes_to_pb
from ratatoskr_client.types import (
    ChatOptions,
    Notes,
    ReasoningOptions,
    ResponseFormat,
    ToolChoice,
    ToolDefinition,
    Truncation,
)

OPTIONS = [
    ChatOptions(),
    ChatOptions(model="up/bench"),
    # Set zeros and falses are not "unset": they reach the model as given.
    ChatOptions(model="m", temperature=0.0, max_tokens=0, top_k=0, seed=0, parallel_tool_calls=False),
    ChatOptions(model="m", stream_failover=False, context_strategy="error"),
    ChatOptions(model="m", temperature=0.7, top_p=0.9, frequency_penalty=-0.5, presence_penalty=1.5, seed=7),
    ChatOptions(model="m", stop=["\n\n", "END"]),
    ChatOptions(
        model="m",
        tools=[ToolDefinition(name="f", description="d", parameters={"type": "object"}, strict=True)],
        tool_choice=ToolChoice("function", "f"),
    ),
    ChatOptions(model="m", response_format=ResponseFormat(type="json_object")),
    ChatOptions(model="m", reasoning=ReasoningOptions(effort="low", max_tokens=64)),
    ChatOptions(model="m", temperature=0.2, raw_provider_options={"logit_bias": {"50256": -100}}),
]


@pytest.mark.parametrize("options", OPTIONS)
def test_chat_options_cross_the_wire_unchanged(options: ChatOptions) -> None:
    back = chat_options_from_pb(chat_options_to_pb(options))
    assert back == options
    assert type(back.stop) is list and type(back.tools) is list and type(back.raw_provider_options) is dict
    for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
        value = getattr(back, name)
        assert value is None or type(value) is float
    for name in ("max_tokens", "top_k", "seed"):
        value = getattr(back, name)
        assert value is None or type(value) is int


@pytest.mark.parametrize(
    "notes",
    [
        Notes(),
        Notes(retries=2, failed_over=["a/x"], budget_warning="global day: 90%"),
        Notes(truncation=Truncation("sliding_window", [1, 2], 900, 500, 512, 12, estimated=True)),
    ],
)
def test_notes_cross_the_wire_unchanged(notes: Notes) -> None:
    assert notes_from_pb(notes_to_pb(notes)) == notes
