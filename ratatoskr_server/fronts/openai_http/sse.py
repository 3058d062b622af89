"""Server-sent events as OpenAI frames them: ``data: <json>\\n\\n`` per chunk, ``data: [DONE]`` last.

Notes known only once the answer is over (``x-ratatoskr-overhead-ms`` above all) cannot be headers,
which left with the first event; they follow the last chunk as SSE comment lines
(``: x-ratatoskr-overhead-ms: 0.412``), which every SSE parser, the OpenAI SDKs' included, skips.

A failure after the stream started cannot change the status any more; it is sent as a last
``data: {"error": …}`` event with no ``[DONE]`` after it, which the OpenAI SDKs raise as an
``APIError`` — a failed stream never looks like a finished one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

DONE = b"data: [DONE]\n\n"

#: Headers of every streamed answer: no caching or proxy buffering of a live stream.
STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def late_notes(notes: Mapping[str, str]) -> bytes:
    """Notes as comment lines, one block; empty when there are none. Values are header-safe already
    (no line breaks), so a note can never end the comment or start an event."""
    if not notes:
        return b""
    return b"".join(f": {name}: {value}\n".encode() for name, value in notes.items()) + b"\n"


def event(payload: dict[str, Any]) -> bytes:
    """One event; compact JSON, non-ASCII kept as UTF-8 (as OpenAI sends it)."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
