"""Server-sent events as OpenAI frames them: ``data: <json>\\n\\n`` per chunk, ``data: [DONE]`` last.

A failure after the stream started cannot change the status any more; it is sent as a last
``data: {"error": …}`` event with no ``[DONE]`` after it, which the OpenAI SDKs raise as an
``APIError`` — a failed stream never looks like a finished one.
"""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"

#: Headers of every streamed answer: no caching or proxy buffering of a live stream.
STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def event(payload: dict[str, Any]) -> bytes:
    """One event; compact JSON, non-ASCII kept as UTF-8 (as OpenAI sends it)."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
