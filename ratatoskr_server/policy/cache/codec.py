"""Cached answers as bytes and back: what the store holds is data, never code.

JSON for the small structured answers (NLI predictions, classifications, chat answers and stream
events) and raw float64 bytes for vectors, which are most of what an embedding cache holds (JSON
would triple their size and their decode time).  Decoding builds the domain types explicitly, so a
value written by another process sharing a store (Redis) can at worst fail to decode — a miss.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from dataclasses import asdict
from typing import Any

from ratatoskr_client.types import (
    ChatEvent,
    ChatResult,
    ClassifyResult,
    ContentDelta,
    Done,
    GenerateResult,
    LabelScore,
    Message,
    NliPrediction,
    ReasoningDelta,
    Timing,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
    UsageEvent,
)


class Undecodable(ValueError):
    """A stored value this version cannot read: the stage treats it as a miss."""


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _load(value: bytes) -> Any:
    try:
        return json.loads(value)
    except ValueError as err:
        raise Undecodable(str(err)) from None


# -- embeddings: one entry per input ------------------------------------------------------------------
#: tokens, normalized, length of the model name; then the name, then the float64 vector.
_EMBED_HEAD = struct.Struct("<IBH")


def embed_item(vector: list[float], tokens: int, model: str, normalized: bool) -> bytes:
    name = model.encode()
    head = _EMBED_HEAD.pack(tokens, normalized, len(name))
    return head + name + struct.pack(f"<{len(vector)}d", *vector)


def read_embed_item(value: bytes) -> tuple[list[float], int, str, bool]:
    """(vector, tokens, model, normalized)."""
    try:
        tokens, normalized, size = _EMBED_HEAD.unpack_from(value)
    except struct.error:
        raise Undecodable("not an embedding entry") from None
    start = _EMBED_HEAD.size + size
    raw = memoryview(value)[start:]
    if len(raw) % 8:
        raise Undecodable("not an embedding entry")
    vector = array("d")
    vector.frombytes(raw)
    if sys.byteorder == "big":  # stored little-endian, as a shared store's other readers expect
        vector.byteswap()
    return vector.tolist(), tokens, value[_EMBED_HEAD.size : start].decode(), bool(normalized)


# -- NLI: one entry per pair ---------------------------------------------------------------------------
def nli_item(prediction: NliPrediction, tokens: int, model: str) -> bytes:
    return _json({"s": [[s.label, s.score] for s in prediction.scores], "l": prediction.label, "t": tokens, "m": model})


def read_nli_item(value: bytes) -> tuple[NliPrediction, int, str]:
    data = _load(value)
    scores = [LabelScore(str(label), float(score)) for label, score in data["s"]]
    return NliPrediction(scores=scores, label=str(data["l"])), int(data["t"]), str(data["m"])


# -- whole answers ---------------------------------------------------------------------------------------
def classify_result(result: ClassifyResult) -> bytes:
    return _json(
        {
            "s": [[s.label, s.score] for s in result.scores],
            "m": result.model,
            "k": result.strategy,
            "u": asdict(result.usage),
        }
    )


def read_classify_result(value: bytes) -> ClassifyResult:
    data = _load(value)
    scores = [LabelScore(str(label), float(score)) for label, score in data["s"]]
    return ClassifyResult(scores=scores, model=str(data["m"]), strategy=str(data["k"]), usage=Usage(**data["u"]))


def chat_result(result: ChatResult | GenerateResult) -> bytes:
    data = asdict(result)
    for dropped in ("timing", "notes"):
        data.pop(dropped)
    data["kind"] = "chat" if isinstance(result, ChatResult) else "generate"
    return _json(data)


def read_chat_result(value: bytes) -> ChatResult | GenerateResult:
    data = _load(value)
    try:
        kind = data.pop("kind")
        usage = Usage(**data.pop("usage"))
        if kind == "generate":
            return GenerateResult(usage=usage, **data)
        message = data.pop("message")
        calls = [ToolCall(**c) for c in message.pop("tool_calls")]
        return ChatResult(message=Message(tool_calls=calls, **message), usage=usage, **data)
    except (KeyError, TypeError) as err:
        raise Undecodable(f"not a chat answer: {err}") from None


# -- streams: the events in order ------------------------------------------------------------------------
_EVENTS: dict[str, type[Any]] = {
    "content": ContentDelta,
    "reasoning": ReasoningDelta,
    "tool_start": ToolCallStart,
    "tool_delta": ToolCallDelta,
    "tool_end": ToolCallEnd,
}
_TAGS = {cls: tag for tag, cls in _EVENTS.items()}


def events(recorded: list[ChatEvent]) -> bytes:
    """The events of a finished stream; Done keeps who answered and the finish reason, not the timing."""
    out: list[dict[str, Any]] = []
    for event in recorded:
        if isinstance(event, UsageEvent):
            out.append({"e": "usage", **asdict(event.usage)})
        elif isinstance(event, Done):
            out.append({"e": "done", "f": event.finish_reason, "p": event.provider, "m": event.model})
        else:
            out.append({"e": _TAGS[type(event)], **asdict(event)})
    return _json(out)


def read_events(value: bytes) -> list[ChatEvent]:
    replayed: list[ChatEvent] = []
    try:
        for item in _load(value):
            tag = item.pop("e")
            if tag == "usage":
                replayed.append(UsageEvent(Usage(**item)))
            elif tag == "done":
                replayed.append(Done(finish_reason=item["f"], timing=Timing(), provider=item["p"], model=item["m"]))
            else:
                replayed.append(_EVENTS[tag](**item))
    except (KeyError, TypeError, AttributeError) as err:
        raise Undecodable(f"not a stream: {err}") from None
    if not replayed or not isinstance(replayed[-1], Done):
        raise Undecodable("a stream without its Done")
    return replayed
