"""A protocol-faithful Ollama on 127.0.0.1: ``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/tags``.

It answers as Ollama does, byte for byte where it matters: NDJSON streams
(``application/x-ndjson``, compact JSON, one object per line) whose last line
has ``done: true``, ``done_reason`` and the counts and durations in
nanoseconds; unary answers (``stream: false``) as one such final object;
tool calls whole, with the arguments as an object and no id; errors as
``{"error": "…"}`` with Ollama's own wording.

The model name picks the behaviour:

- ``llama3``: ``TEXT`` word by word; ``options.num_predict`` cuts it short with ``done_reason: "length"``.
- ``tools``: one line carrying the whole ``TOOL_CALL``, then the final line (``done_reason: "stop"``, as Ollama says).
- ``thinking``: ``THINKING`` on ``message.thinking`` lines (only when the request asked ``think``), then ``TEXT``.
- ``missing``: 404 ``model "missing" not found, try pulling it first``.
- ``midstream-error``: two lines, then ``{"error": MIDSTREAM_ERROR}``.
- ``cut``: two lines, then the answer ends without a final line.
- ``slow``: a line every 50 ms for a minute, setting ``upstream.streaming`` and noticing a client that leaves.
"""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.upstreams.harness import Handler, Upstream, start_stream, write_or_notice

TEXT = "The quick brown fox jumps over the lazy dog."
WORDS = [w + " " for w in TEXT.split(" ")[:-1]] + [TEXT.split(" ")[-1]]
THINKING = "The user wants a pangram. I will give the classic one."
TOOL_CALL: dict[str, Any] = {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}
MIDSTREAM_ERROR = "an error was encountered while running the model: unexpected EOF"
PROMPT_EVAL_COUNT = 26
EMBED_DIMENSION = 4
TAGS = ["llama3:latest", "tools:latest", "thinking:latest", "nomic-embed-text:latest"]

_NDJSON = "application/x-ndjson"
# Durations (ns) in the final line: fixed, so tests can check the timing the adapter derives from them.
TOTAL_NS, LOAD_NS, PROMPT_EVAL_NS, EVAL_NS = 5_191_566_416, 2_154_458, 383_809_000, 4_799_921_000


def _created_at() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _line(data: dict[str, Any]) -> bytes:
    """One NDJSON line as Ollama's Go encoder writes it: compact JSON and a newline."""
    return (json.dumps(data, separators=(",", ":")) + "\n").encode()


def _not_found(model: str) -> web.Response:
    return web.json_response({"error": f'model "{model}" not found, try pulling it first'}, status=404)


def _final(model: str, done_reason: str, eval_count: int, **fields: Any) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": _created_at(),
        **fields,
        "done": True,
        "done_reason": done_reason,
        "total_duration": TOTAL_NS,
        "load_duration": LOAD_NS,
        "prompt_eval_count": PROMPT_EVAL_COUNT,
        "prompt_eval_duration": PROMPT_EVAL_NS,
        "eval_count": eval_count,
        "eval_duration": EVAL_NS,
    }


def _pieces(model: str, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The answer's fragments (each a partial ``message``) and its done_reason, for a well-behaved model."""
    if model == "tools":
        return [{"content": "", "tool_calls": [{"function": TOOL_CALL}]}], "stop"
    pieces: list[dict[str, Any]] = []
    if model == "thinking" and body.get("think"):
        pieces += [{"content": "", "thinking": w} for w in [t + " " for t in THINKING.split(" ")[:-1]]]
        pieces.append({"content": "", "thinking": THINKING.split(" ")[-1]})
    words = [{"content": w} for w in WORDS]
    limit = (body.get("options") or {}).get("num_predict")
    if isinstance(limit, int) and 0 <= limit < len(words):
        return pieces + words[:limit], "length"
    return pieces + words, "stop"


def _fragment(chat: bool, piece: dict[str, Any]) -> dict[str, Any]:
    """A chat fragment is a ``message``; a generate fragment has ``response`` (and ``thinking``) at the top."""
    if chat:
        return {"message": {"role": "assistant", **piece}}
    out: dict[str, Any] = {"response": piece.get("content", "")}
    if "thinking" in piece:
        out["thinking"] = piece["thinking"]
    return out


def _unary(chat: bool, model: str, pieces: list[dict[str, Any]], done_reason: str) -> dict[str, Any]:
    content = "".join(p.get("content", "") for p in pieces)
    thinking = "".join(p.get("thinking", "") for p in pieces)
    calls = [c for p in pieces for c in p.get("tool_calls", [])]
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = calls
        return _final(model, done_reason, len(pieces), message=message)
    fields: dict[str, Any] = {"response": content}
    if thinking:
        fields["thinking"] = thinking
    return _final(model, done_reason, len(pieces), **fields, context=[128006, 882, 128007])


async def _answer(request: web.Request, upstream: Upstream, chat: bool) -> web.StreamResponse:
    body: dict[str, Any] = await request.json()
    model = str(body.get("model") or "")
    if not model:
        return web.json_response({"error": "model is required"}, status=400)
    if model == "missing":
        return _not_found(model)
    pieces, done_reason = _pieces(model, body)
    if not body.get("stream", True):
        return web.json_response(_unary(chat, model, pieces, done_reason))
    response = await start_stream(request, _NDJSON)

    async def send(piece: dict[str, Any]) -> bool:
        data = {"model": model, "created_at": _created_at(), **_fragment(chat, piece), "done": False}
        return await write_or_notice(response, _line(data), upstream)

    if model == "slow":
        for i in range(1200):
            if not await send({"content": f"tick{i} "}):
                return response
            upstream.streaming.set()
            await asyncio.sleep(0.05)
    elif model in ("midstream-error", "cut"):
        for piece in pieces[:2]:
            await send(piece)
        if model == "midstream-error":
            await write_or_notice(response, _line({"error": MIDSTREAM_ERROR}), upstream)
    else:
        for piece in pieces:
            if not await send(piece):
                return response
        last = _fragment(chat, {"content": ""})
        if model == "linger":  # paused from before the final line goes out: a client may read it at once
            upstream.state["paused"] = True
        await write_or_notice(response, _line(_final(model, done_reason, len(pieces), **last)), upstream)
        if model == "linger":  # the connection held open after the final line, shorter than the drain bound
            await asyncio.sleep(upstream.state.get("linger_s", 0.8))
            upstream.state["paused"] = False
    await response.write_eof()
    return response


async def chat(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    return await _answer(request, upstream, chat=True)


async def generate(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    return await _answer(request, upstream, chat=False)


def vector(text: str) -> list[float]:
    """A deterministic unit vector for ``text`` (Ollama's /api/embed answers normalized vectors)."""
    raw = [float(len(text)), float(sum(map(ord, text)) % 97), float(text.count(" ")), 1.0][:EMBED_DIMENSION]
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]


async def embed(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    body: dict[str, Any] = await request.json()
    model = str(body.get("model") or "")
    if model == "missing":
        return _not_found(model)
    inputs = body.get("input")
    texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
    return web.json_response(
        {
            "model": model,
            "embeddings": [vector(t) for t in texts],
            "total_duration": 14_143_917,
            "load_duration": 1_019_500,
            "prompt_eval_count": sum(len(t.split()) for t in texts),
        }
    )


async def tags(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    models = [
        {
            "name": name,
            "model": name,
            "modified_at": "2024-05-14T10:21:07.410452731+02:00",
            "size": 4_661_224_676,
            "digest": f"{i:064x}",
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": "8.0B",
                "quantization_level": "Q4_0",
            },
        }
        for i, name in enumerate(TAGS)
    ]
    return web.json_response({"models": models})


def routes() -> dict[tuple[str, str], Handler]:
    return {
        ("POST", "/api/chat"): chat,
        ("POST", "/api/generate"): generate,
        ("POST", "/api/embed"): embed,
        ("GET", "/api/tags"): tags,
    }
