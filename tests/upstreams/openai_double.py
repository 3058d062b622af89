"""An OpenAI chat-completions double: SSE framing, tool-call fragments, usage chunk, error bodies.

Behaviour is chosen by the requested model name, so one server covers every case a test needs
("flaky-N" fails its first N calls with 503, "early-overload-N" its first N streams with an
in-stream overload before any content; calls are counted per model in ``upstream.state["calls"]``;
"hold" answers only once ``upstream.state["release"]``, a ``threading.Event``, is set, as a busy
local server would; "keepalive" streams its first words and then only SSE keep-alive comments,
"keepalive-early" only comments from the start). A client that sends ``X-Double-Echo`` (a provider
configured with that header) gets the key it authenticated with echoed back, as a careless or
hostile upstream might: in the 401 body ("error"), in answers ("answer": the content split across
stream chunks, the reasoning, the model field) and as a model id of /v1/models ("models"), so tests
can prove that configured secrets never reach a client. Chunks have the exact shapes OpenAI sends
(id, object, created, model, choices[index, delta, logprobs, finish_reason], usage null except on
the last chunk when stream_options.include_usage is set).
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from aiohttp import web

from tests.upstreams import story
from tests.upstreams.harness import Handler, Upstream, sse, start_stream, write_or_notice

TEXT_PIECES = ["Hel", "lo", ", wor", "ld", "! ", "Ünï", "cødé ✓"]
TOOL_ARGS = ['{"ci', 'ty": "Pa', 'ris", "unit', '": "celsius"}']
USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 7,
    "total_tokens": 19,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 2},
}
ERRORS: dict[str, tuple[int, dict[str, Any], dict[str, str]]] = {
    "rate-limited": (
        429,
        {"error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}},
        {"retry-after": "3"},
    ),
    "auth": (
        401,
        {
            "error": {
                "message": "Incorrect API key provided: sk-test-************************cdef.",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        },
        {},
    ),
    "bad-request": (400, {"error": {"message": "'messages' must be a list", "type": "invalid_request_error"}}, {}),
    "too-long": (
        400,
        {
            "error": {
                "message": "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
            }
        },
        {},
    ),
    "filtered": (
        400,
        {"error": {"message": "The response was filtered", "type": "invalid_request_error", "code": "content_filter"}},
        {},
    ),
    "server-error": (500, {"error": {"message": "The server had an error", "type": "server_error"}}, {}),
    "unavailable": (503, {"error": {"message": "The engine is currently overloaded", "type": "server_error"}}, {}),
}


#: Comma-separated places to echo the received key: "error", "answer", "models".
ECHO_HEADER = "X-Double-Echo"


def received_key(request: web.Request) -> str:
    """The key the client sent: the bearer token of Authorization, or the bare api-key header (Azure)."""
    authorization = request.headers.get("Authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[len("bearer ") :]
    return request.headers.get("api-key", "")


def echoes(request: web.Request, place: str) -> str:
    """The received key if the client asked for it to be echoed at ``place``, else ""."""
    places = {p.strip() for p in request.headers.get(ECHO_HEADER, "").split(",")}
    return received_key(request) if place in places else ""


def echo_pieces(key: str) -> list[str]:
    """The key inside a sentence, cut in the middle of the key so no single chunk holds it whole."""
    return [" Your key is ", key[:7], key[7:], "."]


def chunk(model: str, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": choices,
        "usage": None,
        **extra,
    }


def failing_now(model: str, upstream: Upstream) -> bool:
    """For "flaky-N" and "early-overload-N": whether this call is one of the first N to this model
    (counted per upstream in ``state["calls"]``), which fail; later ones answer."""
    calls: dict[str, int] = upstream.state.setdefault("calls", {})
    calls[model] = calls.get(model, 0) + 1
    prefix, _, count = model.rpartition("-")
    return prefix in ("flaky", "early-overload") and count.isdigit() and calls[model] <= int(count)


#: How long "hold" waits for ``state["release"]`` and "keepalive" sends comments, at most.
HOLD_LIMIT_S = 60.0
KEEPALIVE_COMMENT = b": keep-alive\n\n"


async def _held(request: web.Request, upstream: Upstream) -> bool:
    """Wait for ``state["release"]``; False if the client went away first."""
    release: threading.Event = upstream.state.setdefault("release", threading.Event())
    for _ in range(int(HOLD_LIMIT_S / 0.02)):
        if release.is_set():
            return True
        if request.transport is None or request.transport.is_closing():
            upstream.disconnected.set()
            return False
        await asyncio.sleep(0.02)
    return True


async def _keepalive(request: web.Request, upstream: Upstream, model: str) -> web.StreamResponse:
    """An upstream that is stuck but alive: comments every 50 ms and nothing of the answer."""
    response = await start_stream(request, "text/event-stream")
    await response.write(sse(chunk(model, {"role": "assistant", "content": ""})))
    if model == "keepalive":
        await response.write(sse(chunk(model, {"content": "Let me think"})))
    for _ in range(int(HOLD_LIMIT_S / 0.05)):
        if not await write_or_notice(response, KEEPALIVE_COMMENT, upstream):
            return response
        await asyncio.sleep(0.05)
    return response


async def chat_completions(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    body = await request.json()
    model = body.get("model", "")
    if model == "hold" and not await _held(request, upstream):
        return web.Response(status=499)
    if model in ("keepalive", "keepalive-early") and body.get("stream"):
        return await _keepalive(request, upstream, model)
    failing = failing_now(model, upstream)
    if failing and model.startswith("flaky-"):  # the first N calls: 503 overloaded, then answers
        status, payload, headers = ERRORS["unavailable"]
        return web.json_response(payload, status=status, headers=headers)
    if failing and model.startswith("early-overload-") and body.get("stream"):
        # The first N streams: HTTP 200, the role chunk, then an overload before any content.
        response = await start_stream(request, "text/event-stream")
        await response.write(sse(chunk(model, {"role": "assistant", "content": ""})))
        await response.write(sse({"error": {"message": "Overloaded", "type": "overloaded_error"}}))
        await response.write_eof()
        return response
    if model in STORY_MODELS and body.get("stream"):
        return await _story(request, upstream, model, body)
    if model in ERRORS:
        status, payload, headers = ERRORS[model]
        key = echoes(request, "error")
        if model == "auth" and key:  # an upstream that quotes the rejected key whole
            payload = {"error": {**payload["error"], "message": f"Incorrect API key provided: {key}."}}
        return web.json_response(payload, status=status, headers=headers)
    if model == "no-seed" and "seed" in body:
        error = {
            "message": "Unsupported parameter: 'seed' is not supported with this model.",
            "type": "invalid_request_error",
            "param": "seed",
            "code": "unsupported_parameter",
        }
        return web.json_response({"error": error}, status=400)
    echo = echoes(request, "answer")
    if not body.get("stream"):
        return web.json_response(_unary(model, body, echo))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    response = await start_stream(request, "text/event-stream")
    upstream.streaming.set()
    if model == "flood":
        return await _flood(response, model, upstream)
    for event in _events(model, include_usage, echo):
        if event == "SLEEP":
            await asyncio.sleep(0.05)
            continue
        if event == "CUT":
            return response  # ends the body without [DONE]: a cut stream
        if isinstance(event, tuple) and event[0] == "PAUSE":
            # "stall": silence mid-answer; "linger": the connection held open after [DONE].
            upstream.state["paused"] = True
            pause = upstream.state.get("linger_s", event[1]) if model == "linger" else event[1]
            for _ in range(int(pause / 0.05)):
                if request.transport is None or request.transport.is_closing():
                    upstream.disconnected.set()
                    return response  # the client gave up during the silence (paused stays True)
                await asyncio.sleep(0.05)
            upstream.state["paused"] = False
            continue
        if model == "linger" and event == "[DONE]":
            # Paused from before the end goes out: a client may read it before this thread runs again.
            upstream.state["paused"] = True
        if not await write_or_notice(response, sse(event), upstream):
            return response
    await response.write_eof()
    return response


#: Streaming failover (``tests/upstreams/story.py``): "story" streams the story (cut on command),
#: "story-continue" continues a prefix of it, "story-tools" starts a tool call and is cut inside it.
STORY_MODELS = ("story", "story-continue", "story-tools", "story-reasoning")
#: A completion-only model (ChatML prompts on /completions): it continues the assistant turn the
#: prompt opens, whatever it holds already.
STORY_RAW = "story-raw"
CHATML_ASSISTANT = "<|im_start|>assistant\n"


def story_events(model: str, text: str = story.STORY) -> list[tuple[bytes, str]]:
    """The SSE events of a story stream, each with the answer text it carries."""
    usage = story.CONTINUE_USAGE if model == "story-continue" else story.STORY_USAGE
    events = [(story.data(chunk(model, {"role": "assistant", "content": ""})), "")]
    if model == "story-reasoning":
        events.append((story.data(chunk(model, {"reasoning_content": "The user wants the story."})), ""))
    events += [(story.data(chunk(model, {"content": piece})), piece) for piece in story.pieces(text)]
    events.append((story.data(chunk(model, {}, "stop")), ""))
    events.append((story.data({**chunk(model, None), "usage": usage}), ""))
    events.append((story.data("[DONE]"), ""))
    return events


def _story_prefix(body: dict[str, Any]) -> tuple[str, bool] | None:
    """(the answer to continue, whether it came as a prefill), or None for a fresh answer."""
    messages = body.get("messages") or []
    if messages and messages[-1].get("role") == "assistant" and body.get("continue_final_message"):
        return str(messages[-1].get("content") or ""), True
    if len(messages) >= 2 and messages[-2].get("role") == "assistant" and messages[-1].get("role") == "user":
        return str(messages[-2].get("content") or ""), False
    return None


async def _story(request: web.Request, upstream: Upstream, model: str, body: dict[str, Any]) -> web.StreamResponse:
    text = story.STORY
    if model == "story-continue":
        asked = _story_prefix(body)
        if asked is not None:
            upstream.state.setdefault("continued", []).append(asked)
            rest = story.continuation(*asked)
            if rest is None:
                error = {"message": "the prefix to continue is not the story's start", "type": "invalid_request_error"}
                return web.json_response({"error": error}, status=400)
            text = rest
    if model == "story-tools":
        call = {"index": 0, "id": "call_t", "type": "function", "function": {"name": "lookup", "arguments": ""}}
        raw = [
            story.data(chunk(model, {"role": "assistant", "content": ""})),
            story.data(chunk(model, {"content": "Let me look that up. "})),
            story.data(chunk(model, {"tool_calls": [call]})),
            story.data(chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": '{"que'}}]})),
            story.data(chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": 'ry": "Ygg'}}]})),
        ]
        whole = b"".join(raw)  # and the body ends: cut inside the tool call's arguments
    else:
        whole = b"".join(event for event, _ in story_events(model, text))
        cut = story.cut_at(body)
        if cut is not None and model in ("story", "story-reasoning"):
            whole = whole[:cut]
    response = await start_stream(request, "text/event-stream")
    await write_or_notice(response, whole, upstream)
    return response


async def _story_raw(request: web.Request, upstream: Upstream, body: dict[str, Any]) -> web.StreamResponse:
    """The rest of the assistant turn the ChatML prompt opens, as ``text_completion`` chunks."""
    prompt = str(body.get("prompt") or "")
    opened = prompt.rfind(CHATML_ASSISTANT)
    prefix = prompt[opened + len(CHATML_ASSISTANT) :] if opened >= 0 else None
    rest = None if prefix is None else story.continuation(prefix, True)
    if prefix is None or rest is None:
        error = {"message": "the prompt does not open an assistant turn of the story", "type": "invalid_request_error"}
        return web.json_response({"error": error}, status=400)
    upstream.state.setdefault("continued", []).append((prefix, True))
    response = await start_stream(request, "text/event-stream")
    for piece in story.pieces(rest):
        choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": None}
        await response.write(
            story.data({"id": "cmpl-s", "object": "text_completion", "model": STORY_RAW, "choices": [choice]})
        )
    last = {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}
    usage = story.CONTINUE_USAGE
    done = {"id": "cmpl-s", "object": "text_completion", "model": STORY_RAW, "choices": [last], "usage": usage}
    await response.write(story.data(done) + story.data("[DONE]"))
    return response


#: 96 MiB: more than loopback TCP buffers (tcp_rmem autotunes up to 32 MiB) and gRPC's
#: flow-control windows can hold together, so only backpressure can stop the writer early.
FLOOD_CHUNKS = 6000
FLOOD_PIECE = "x" * 16384


async def _flood(response: web.StreamResponse, model: str, upstream: Upstream) -> web.StreamResponse:
    """As fast as the connection takes it: 16 KiB chunks, counting what was written."""
    upstream.state["flood_written"] = 0
    for _ in range(FLOOD_CHUNKS):
        if not await write_or_notice(response, sse(chunk(model, {"content": FLOOD_PIECE})), upstream):
            return response
        upstream.state["flood_written"] += 1
    await response.write(sse(chunk(model, {}, "stop")))
    await response.write(sse("[DONE]"))
    await response.write_eof()
    return response


def _events(model: str, include_usage: bool, echo: str = "") -> list[Any]:
    events: list[Any] = [chunk(model, {"role": "assistant", "content": ""})]
    if model == "tools":
        events.append(
            chunk(
                model,
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "weather", "arguments": ""},
                        }
                    ]
                },
            )
        )
        events += [chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": a}}]}) for a in TOOL_ARGS]
        events.append(
            chunk(
                model,
                {
                    "tool_calls": [
                        {"index": 1, "id": "call_b", "type": "function", "function": {"name": "time", "arguments": ""}}
                    ]
                },
            )
        )
        events.append(chunk(model, {"tool_calls": [{"index": 1, "function": {"arguments": '{"tz": "CET"}'}}]}))
        events.append(chunk(model, {}, "tool_calls"))
    elif model in ("slow", "slow-brief"):  # 20 s of pieces, or half a second of them
        pieces = 400 if model == "slow" else 10
        events += ["SLEEP", *(x for i in range(pieces) for x in (chunk(model, {"content": f"{i} "}), "SLEEP"))]
        events.append(chunk(model, {}, "stop"))
    elif model == "cut":
        events += [chunk(model, {"content": p}) for p in TEXT_PIECES[:2]] + ["CUT"]
    elif model == "finished-cut":  # the finish reason arrived, then the body was cut before [DONE]
        events += [chunk(model, {"content": p}) for p in TEXT_PIECES[:2]] + [chunk(model, {}, "stop"), "CUT"]
    elif model == "stall":
        events += [chunk(model, {"content": "thinking about it"}), ("PAUSE", 30.0)]
        events.append(chunk(model, {}, "stop"))
    elif model == "midstream-error":
        events += [chunk(model, {"content": p}) for p in TEXT_PIECES[:2]]
        events.append({"error": {"message": "upstream worker crashed", "type": "server_error", "code": "internal"}})
    else:
        events.append({**chunk(model, None), "choices": None})  # vLLM sends choices: null
        for piece in TEXT_PIECES + (echo_pieces(echo) if echo else []):
            events.append(chunk(model, {"content": piece}))
            events.append(chunk(model, {"content": ""}))  # llama.cpp: a partial UTF-8 sequence
        events.append(chunk(model, {"reasoning_content": "thinking..."}))
        if echo:
            events += [chunk(model, {"reasoning_content": p}) for p in echo_pieces(echo)]
        events.append(chunk(model, {}, "stop"))
    if include_usage and model not in ("cut", "midstream-error", "finished-cut"):
        events.append({**chunk(model, None), "usage": USAGE})
    if model not in ("cut", "midstream-error", "finished-cut"):
        events.append("[DONE]")
    if model == "linger":
        events.append(("PAUSE", 0.8))  # shorter than the drain bound: an early Done can only be ours
    return events


def _unary(model: str, body: dict[str, Any], echo: str = "") -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "".join(TEXT_PIECES)}
    if echo:
        message["content"] += "".join(echo_pieces(echo))
        message["reasoning_content"] = "thinking..." + "".join(echo_pieces(echo))
    finish = "stop"
    if model == "tools":
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "".join(TOOL_ARGS)}}
            ],
        }
        finish = "tool_calls"
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1700000000,
        "model": f"{model}:{echo}" if echo else model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": USAGE,
    }


async def completions(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    body = await request.json()
    model = body.get("model", "")
    if model == STORY_RAW and body.get("stream"):
        return await _story_raw(request, upstream, body)
    pieces = ["Once", " upon", " a", " time"]
    if model == "echo-prompt":  # an answer that names its prompt, so a batch's choices can be told apart
        prompt = str(body.get("prompt"))
        if prompt.startswith("fail:") and prompt[5:] in ERRORS:  # one prompt of a batch refused upstream
            status, payload, headers = ERRORS[prompt[5:]]
            return web.json_response(payload, status=status, headers=headers)
        pieces = ["you said: ", prompt]
    echo = echoes(request, "answer")
    if echo:
        pieces += echo_pieces(echo)
        model = f"{model}:{echo}"
    if not body.get("stream"):
        choice = {"index": 0, "text": "".join(pieces), "logprobs": None, "finish_reason": "length"}
        return web.json_response(
            {"id": "cmpl-test", "object": "text_completion", "model": model, "choices": [choice], "usage": USAGE}
        )
    response = await start_stream(request, "text/event-stream")
    for i, piece in enumerate(pieces):
        finish = "length" if i == len(pieces) - 1 else None
        choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}
        await response.write(sse({"id": "cmpl-test", "object": "text_completion", "model": model, "choices": [choice]}))
    await response.write(sse("[DONE]"))
    await response.write_eof()
    return response


async def embeddings(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    body = await request.json()
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [{"object": "embedding", "index": i, "embedding": [float(len(t)), 0.5, -0.25]} for i, t in enumerate(inputs)]
    data.reverse()  # the API does not promise order; the index does
    return web.json_response({"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 3}})


async def models(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    names = ["gpt-test", "tools"]
    key = echoes(request, "models")
    if key:
        names.append(f"ft:{key}")  # a fine-tune or deployment named after the key it was made with
    listed = [{"id": name, "object": "model", "owned_by": "test"} for name in names]
    return web.json_response({"object": "list", "data": listed})


def routes(prefix: str = "/v1") -> dict[tuple[str, str], Handler]:
    return {
        ("POST", f"{prefix}/chat/completions"): chat_completions,
        ("POST", f"{prefix}/completions"): completions,
        ("POST", f"{prefix}/embeddings"): embeddings,
        ("GET", f"{prefix}/models"): models,
    }


def assembled_text() -> str:
    return "".join(TEXT_PIECES)


def tool_arguments() -> dict[str, Any]:
    return dict(json.loads("".join(TOOL_ARGS)))
