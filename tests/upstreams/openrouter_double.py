"""A protocol-faithful OpenRouter model catalogue on 127.0.0.1: ``GET /api/v1/models``.

It answers as OpenRouter does: ``{"data": [...]}`` whose entries carry
``id``, ``canonical_slug``, ``name``, ``created``, ``description``,
``context_length``, ``architecture``, ``pricing`` (USD per token, as
decimal strings; ``"-1"`` where the price varies, as for the auto router),
``top_provider``, ``per_request_limits``, ``supported_parameters`` and
``default_parameters``; no authentication needed.

``upstream.state`` steers it between requests:

- ``models``: replaces :data:`MODELS` (a changed catalogue for the next refresh);
- ``fail``: ``"500"`` (OpenRouter's error object with HTTP 500), ``"garbage"`` (an HTML page
  sent as JSON), ``"shape"`` (valid JSON without a ``data`` list) or ``"slow"`` (answers after
  :data:`SLOW_S` seconds, or gives up when the client has gone); ``None`` behaves.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from aiohttp import web

from tests.upstreams.harness import Handler, Upstream

PATH = "/api/v1/models"
SLOW_S = 5.0

_OPENAI_PARAMETERS = [
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "max_tokens",
    "presence_penalty",
    "response_format",
    "seed",
    "stop",
    "structured_outputs",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
]


def _model(
    ident: str,
    name: str,
    *,
    context: int,
    max_completion: int | None,
    tokenizer: str,
    pricing: dict[str, str],
    parameters: list[str],
    instruct_type: str | None = None,
    description: str = "",
) -> dict[str, Any]:
    full_pricing = {"prompt": "0", "completion": "0", "request": "0", "image": "0", "web_search": "0"}
    full_pricing |= {"internal_reasoning": "0"} | pricing
    return {
        "id": ident,
        "canonical_slug": ident,
        "hugging_face_id": "",
        "name": name,
        "created": 1_718_841_600,
        "description": description or f"{name} as served through OpenRouter.",
        "context_length": context,
        "architecture": {
            "modality": "text->text",
            "input_modalities": ["text"],
            "output_modalities": ["text"],
            "tokenizer": tokenizer,
            "instruct_type": instruct_type,
        },
        "pricing": full_pricing,
        "top_provider": {"context_length": context, "max_completion_tokens": max_completion, "is_moderated": False},
        "per_request_limits": None,
        "supported_parameters": parameters,
        "default_parameters": {"temperature": None, "top_p": None, "frequency_penalty": None},
    }


#: The catalogue served by default: real ids, OpenRouter's field shapes, prices as per-token strings.
MODELS: list[dict[str, Any]] = [
    _model(
        "anthropic/claude-3.5-sonnet",
        "Anthropic: Claude 3.5 Sonnet",
        context=200_000,
        max_completion=8_192,
        tokenizer="Claude",
        pricing={
            "prompt": "0.000003",
            "completion": "0.000015",
            "input_cache_read": "0.0000003",
            "input_cache_write": "0.00000375",
        },
        parameters=["max_tokens", "temperature", "top_p", "top_k", "stop", "tools", "tool_choice"],
        description="New Claude 3.5 Sonnet delivers better-than-Opus capabilities.",
    ),
    _model(
        "openai/gpt-4o-mini",
        "OpenAI: GPT-4o-mini",
        context=128_000,
        max_completion=16_384,
        tokenizer="GPT",
        pricing={"prompt": "0.00000015", "completion": "0.0000006", "input_cache_read": "0.000000075"},
        parameters=[*_OPENAI_PARAMETERS, "parallel_tool_calls"],
    ),
    _model(
        "meta-llama/llama-3.1-8b-instruct",
        "Meta: Llama 3.1 8B Instruct",
        context=131_072,
        max_completion=None,  # OpenRouter sends null when the top provider sets no separate limit
        tokenizer="Llama3",
        pricing={"prompt": "0.0000001", "completion": "0.00000002"},
        parameters=["max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "min_p", "repetition_penalty"],
        instruct_type="llama3",
    ),
    _model(
        "openai/gpt-4",
        "OpenAI: GPT-4",
        context=8_191,
        max_completion=4_096,
        tokenizer="GPT",
        pricing={"prompt": "0.00003", "completion": "0.00006"},
        parameters=_OPENAI_PARAMETERS,
    ),
    _model(
        "openrouter/auto",
        "Auto Router",
        context=2_000_000,
        max_completion=None,
        tokenizer="Router",
        pricing={"prompt": "-1", "completion": "-1"},
        parameters=[],
        description="Your prompt will be processed by a meta-model and routed to one of dozens of models.",
    ),
]


def routes() -> dict[tuple[str, str], Handler]:
    return {("GET", PATH): _models}


async def _models(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    fail = upstream.state.get("fail")
    if fail == "500":
        return web.json_response({"error": {"code": 500, "message": "Internal Server Error"}}, status=500)
    if fail == "garbage":
        page = "<html><head><title>502 Bad Gateway</title></head><body>cloudflare</body></html>"
        return web.Response(text=page, content_type="application/json")
    if fail == "shape":
        return web.json_response({"data": {"models": "moved"}})
    if fail == "slow":
        # Poll rather than sleep: a client that gave up closes the connection, and the server's
        # shutdown at the end of the test should not wait for an answer nobody will read.
        for _ in range(int(SLOW_S / 0.01)):
            if request.transport is None or request.transport.is_closing():
                upstream.disconnected.set()
                break
            await asyncio.sleep(0.01)
    return web.json_response({"data": copy.deepcopy(upstream.state.get("models", MODELS))})
