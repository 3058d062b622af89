"""``Call``: one model call as the stages see it, whichever task and way in.

Stages read it and pass on a changed copy (it is frozen, so a stage's change is visible only
downstream of it, and a retry or fallback upstream starts again from its own copy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ratatoskr_client.types import (
    ChatOptions,
    ChatResult,
    ClassifyResult,
    EmbedResult,
    GenerateResult,
    Message,
    NliResult,
)
from ratatoskr_server.providers.capabilities import Capability, Provider


@dataclass(frozen=True, slots=True)
class EmbedInput:
    inputs: Sequence[str]
    truncate: bool = True


@dataclass(frozen=True, slots=True)
class NliInput:
    pairs: Sequence[tuple[str, str]]
    truncate: bool = True


@dataclass(frozen=True, slots=True)
class ClassifyInput:
    text: str
    labels: Sequence[str]
    multi_label: bool = False
    hypothesis_template: str = ""


@dataclass(frozen=True, slots=True)
class ChatInput:
    messages: Sequence[Message]


@dataclass(frozen=True, slots=True)
class GenerateInput:
    prompt: str


Payload = EmbedInput | NliInput | ClassifyInput | ChatInput | GenerateInput
Result = EmbedResult | NliResult | ClassifyResult | ChatResult | GenerateResult
R = TypeVar("R", EmbedResult, NliResult, ClassifyResult, ChatResult, GenerateResult)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One place a call can go: a provider and the model name it knows."""

    provider: Provider
    model: str

    @property
    def id(self) -> str:
        return f"{self.provider.name}/{self.model}"


@dataclass(frozen=True, slots=True)
class Continuation:
    """The answer so far, which this call's target is to continue (streaming failover).

    ``text`` is what the caller already received; ``mode`` how the target takes it ("prefill": as the
    start of its own turn, "prompt": through a request to continue).  The adapter builds the wire
    request for it; a completion-only target gets it appended to its rendered prompt.
    """

    text: str
    mode: str


@dataclass(frozen=True, slots=True)
class Call:
    task: Capability
    #: The model as the caller named it, until the preset and plan stages resolve it.
    model: str
    payload: Payload
    #: Generation parameters, for chat and generate.
    options: ChatOptions | None = None
    #: Where the call may go, in order of preference, once planned.
    candidates: tuple[Candidate, ...] = ()
    #: The candidate this attempt goes to.
    target: Candidate | None = None
    #: Set on a stream that resumes another candidate's broken answer: this call continues it.
    continuation: Continuation | None = None

    def but(self, **changes: Any) -> Call:
        return replace(self, **changes)


def expect(result: Result, kind: type[R]) -> R:
    """``result`` as the type its task produces; anything else is a bug in a stage."""
    if not isinstance(result, kind):
        raise TypeError(f"the pipeline answered {type(result).__name__} where {kind.__name__} was due")
    return result
