"""A loopback double of the Hugging Face router, speaking its wire formats.

Routes (``base_url`` is the router root, as in production):

* ``POST /v1/chat/completions``: OpenAI-compatible.  Streams are SSE: a role
  delta with empty content, content deltas, a finish chunk, the usage chunk
  (``choices: []``, only when ``stream_options.include_usage``) and
  ``data: [DONE]``; non-final chunks carry ``"usage": null``.
* ``POST /hf-inference/models/{model}/pipeline/feature-extraction``: one vector
  per input; model ``token-level`` answers ``[1][tokens][dim]`` per input (a
  transformers pipeline without pooling), ``token-level-3d`` ``[tokens][dim]``.
* ``POST /hf-inference/models/{model}``: zero-shot classification; ``zs-new``
  answers ``[{"label", "score"}, ...]``, ``zs-legacy`` the old
  ``{"sequence", "labels", "scores"}``.  Both sorted by score, as the real one
  does, unless ``upstream.state["unsorted"]`` asks for candidate order.

Models with a special meaning on every route: ``loading`` (503 with
``estimated_time`` 20.0), ``busy`` (503 without an estimate, ``Retry-After: 3``),
``auth`` (401 as HF words it), ``auth-echo`` (401 quoting the caller's token,
as some APIs do, to prove it is scrubbed).  A request without
``Authorization: Bearer hf_...`` is refused with 401 too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from tests.upstreams.harness import Handler, Upstream, serve, sse, start_stream, write_or_notice

DIM = 4
FEATURE_SUFFIX = "/pipeline/feature-extraction"
STREAM_PIECES = ["Hel", "lo", "", " world"]  # "" as some servers send for partial UTF-8 sequences
USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
LOADING_ESTIMATE_S = 20.0


def token_vector(token: str) -> list[float]:
    """A deterministic vector for one token (tests recompute it to check pooling)."""
    return [float(len(token)), float(sum(c in "aeiou" for c in token.lower())), float(ord(token[0]) % 7), 1.0]


def sentence_vector(text: str) -> list[float]:
    """A deterministic sentence vector, different from any token-mean so shapes cannot be confused."""
    return [float(len(text)), float(len(text.split())), float(text.count("e")), -1.0]


def zero_shot_scores(text: str, labels: list[str], multi_label: bool) -> list[float]:
    """Deterministic scores: the share of a label's letters found in the text (label length breaks ties)."""
    words = text.lower()
    raw = [sum(ch in words for ch in label.lower()) / len(label) + len(label) / 1000 for label in labels]
    if multi_label:
        return [1.0 / (1.0 + math.exp(-(4 * r - 2))) for r in raw]  # independent per label
    exps = [math.exp(4 * r) for r in raw]
    return [e / sum(exps) for e in exps]  # sums to 1 across labels


def _error(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status)


def _refusal(request: web.Request, model: str) -> web.Response | None:
    """The answers every route shares: missing credentials, a cold model, a rejected key."""
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer hf_"):
        return _error(401, {"error": "Invalid credentials in Authorization header"})
    if model == "loading":
        return _error(503, {"error": f"Model {model} is currently loading", "estimated_time": LOADING_ESTIMATE_S})
    if model == "busy":
        return web.json_response({"error": "Service Unavailable"}, status=503, headers={"Retry-After": "3"})
    if model == "auth":
        return _error(401, {"error": "Invalid credentials in Authorization header"})
    if model == "auth-echo":
        token = auth.removeprefix("Bearer ")
        return _error(401, {"error": f"Invalid credentials: token {token} is not valid"})
    return None


def _chunk(model: str, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    return {
        "id": "chatcmpl-hf-1",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": None,
        **extra,
    }


async def chat_completions(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    body = await request.json()
    model = str(body.get("model", ""))
    refused = _refusal(request, model)
    if refused is not None:
        return refused
    if not body.get("messages"):
        return _error(422, {"error": ["Input validation error: `messages` must not be empty"]})
    if not body.get("stream"):
        return web.json_response(
            {
                "id": "chatcmpl-hf-1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(STREAM_PIECES)},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": USAGE,
            }
        )
    response = await start_stream(request, "text/event-stream")
    upstream.streaming.set()
    events = [_chunk(model, {"role": "assistant", "content": ""})]
    events += [_chunk(model, {"content": piece}) for piece in STREAM_PIECES]
    events.append(_chunk(model, {}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append(_chunk(model, None, usage=USAGE))
    for event in events:
        if not await write_or_notice(response, sse(event), upstream):
            return response
    await write_or_notice(response, sse("[DONE]"), upstream)
    await response.write_eof()
    return response


async def models(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    """``/hf-inference/models/{model...}``: feature extraction when the pipeline suffix is there, else zero-shot."""
    path = request.match_info["model"]
    if path.endswith(FEATURE_SUFFIX):
        return await _feature_extraction(request, path.removesuffix(FEATURE_SUFFIX))
    return await _zero_shot(request, upstream, path)


async def _feature_extraction(request: web.Request, model: str) -> web.StreamResponse:
    refused = _refusal(request, model)
    if refused is not None:
        return refused
    inputs = (await request.json()).get("inputs")
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    if model == "token-level":
        answer: list[Any] = [[[token_vector(t) for t in text.split()]] for text in texts]
    elif model == "token-level-3d":
        answer = [[token_vector(t) for t in text.split()] for text in texts]
    else:
        answer = [sentence_vector(text) for text in texts]
    return web.json_response(answer[0] if isinstance(inputs, str) else answer)


async def _zero_shot(request: web.Request, upstream: Upstream, model: str) -> web.StreamResponse:
    refused = _refusal(request, model)
    if refused is not None:
        return refused
    body = await request.json()
    text, parameters = body.get("inputs"), body.get("parameters") or {}
    labels = parameters.get("candidate_labels")
    if not isinstance(text, str) or not labels:
        return _error(400, {"error": "Invalid inputs: candidate_labels is required"})
    template = str(parameters.get("hypothesis_template") or "")
    if template and "{}" not in template:
        return _error(400, {"error": "The provided hypothesis_template was not able to be formatted"})
    scores = zero_shot_scores(text, labels, bool(parameters.get("multi_label")))
    pairs = list(zip(labels, scores, strict=True))
    if not upstream.state.get("unsorted"):
        pairs.sort(key=lambda p: p[1], reverse=True)
    if model == "zs-legacy":
        return web.json_response({"sequence": text, "labels": [p[0] for p in pairs], "scores": [p[1] for p in pairs]})
    if model == "zs-new":
        return web.json_response([{"label": label, "score": score} for label, score in pairs])
    return _error(404, {"error": f"Model {model} does not exist"})


ROUTES: dict[tuple[str, str], Handler] = {
    ("POST", "/v1/chat/completions"): chat_completions,
    ("POST", "/hf-inference/models/{model:.+}"): models,
}


@contextmanager
def huggingface_upstream() -> Iterator[Upstream]:
    """The double on 127.0.0.1; its ``base_url`` is the router root."""
    with serve(ROUTES) as upstream:
        yield upstream
