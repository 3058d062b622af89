"""A loopback double of Anthropic's Messages API, faithful to its wire format, for ``harness.serve``.

It checks what the real API checks before answering (``x-api-key`` and
``anthropic-version`` headers, ``max_tokens`` present, only user/assistant
roles that alternate, non-empty text, every ``tool_result`` answering a
``tool_use`` of the turn before, thinking budgets) and answers with the
API's exact error body ``{"type":"error","error":{"type","message"}}``, so
an adapter that builds a wrong request fails here as it would in production.

What it answers is scripted by the request's ``model``:

=======================  ==============================================================
``text``                 two-line text (non-ASCII) in five deltas, ``end_turn``, cache reads
``tools``                text, then three ``tool_use`` blocks (arguments split mid-token;
                         the last takes no arguments), ``tool_use``
``thinking``             a thinking block (thinking + signature deltas), then text
``length``               text cut by ``max_tokens``
``stop-sequence``        text ended by ``stop_sequence``
``refusal``              ``refusal``
``overloaded-midstream`` HTTP 200, some text, then an ``error`` event (``overloaded_error``)
``slow``                 a text delta every ``delay_s`` for a minute; sets ``streaming``
                         after the first, and ``disconnected`` when the client goes away
``cut``                  two text deltas, then the stream ends without ``message_stop``
``pinging``              two text deltas, then only ``ping`` events every 50 ms for a minute
                         (an upstream stuck mid-answer whose keep-alives still flow)
``rate-limited``         429 ``rate_limit_error`` with ``retry-after: 7``
``auth``                 401 ``authentication_error`` that echoes the rejected key (as some
                         APIs do) so tests prove adapters scrub it
``overloaded``           529 ``overloaded_error``
``too-long``             400 ``invalid_request_error`` "prompt is too long: ..."
``story``                ``tests/upstreams/story.py``'s story, cut after ``x_double_cut_at`` bytes
``story-continue``       continues a prefix of the story: after a prefill (a final assistant
                         turn) exactly, when asked in a user turn from the last word's start
=======================  ==============================================================

Any other model is a 404 ``not_found_error``.  Non-streaming requests get
the same scripts assembled into one message object (``overloaded-midstream``
becomes a 529; ``slow`` and ``cut`` only stream).  Events go out as the API
sends them: ``message_start``, a ``ping``, per content block
``content_block_start``/``content_block_delta``/``content_block_stop``,
``message_delta`` (stop reason, cumulative ``output_tokens``),
``message_stop``, with another ``ping`` between blocks.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.upstreams import story
from tests.upstreams.harness import Handler, Upstream, sse, start_stream, write_or_notice

#: Text of the ``text`` script as streamed: one string, a squirrel and a line break included.
TEXT_PARTS = ["Grüße", ", Welt! Ein 🐿️", " läuft den", " Baum hinauf.\n", "Zweite Zeile."]
TEXT = "".join(TEXT_PARTS)
TOOL_TEXT_PARTS = ["Let me ", "check that."]
#: (id, name, partial_json fragments) of the ``tools`` script; the first fragment is "" as the API sends it.
TOOL_CALLS = [
    (
        "toolu_01A09q90qw90lq917835lq9",
        "get_weather",
        ["", '{"loca', 'tion": "Bergen, ', 'Norway", "unit": "c', 'elsius"}'],
    ),
    ("toolu_01B7Xh2Y5bQ1cD3eF4gH6jK", "get_time", ["", '{"tz": ', '"Europe/Oslo"}']),
    ("toolu_01C8Zp3W6nR2dE4fG5hJ7kL", "list_alerts", [""]),
]
THINKING_PARTS = ["The user wants", " a short fact about squirrels.", " Keep it brief."]
THINKING_TEXT_PARTS = ["Squirrels", " plant", " forests."]
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"
#: Token counts every script reports: message_start carries the input side, message_delta the output.
INPUT_TOKENS = 42
CACHE_READ_TOKENS = 8
OUTPUT_TOKENS = {"text": 17, "tools": 88, "thinking": 31, "length": 5, "stop-sequence": 6, "refusal": 3}
DEFAULT_MODELS = [
    "claude-opus-4-1-20250805",
    "claude-sonnet-4-20250514",
    "claude-3-5-haiku-20241022",
    "text",
    "tools",
    "thinking",
]
MIN_THINKING_BUDGET = 1024


@dataclass
class _Block:
    """A content block of a script: its start object, its deltas, and its complete form for unary answers."""

    start: dict[str, Any]
    deltas: list[dict[str, Any]] = field(default_factory=list)

    def complete(self) -> dict[str, Any]:
        whole = dict(self.start)
        if whole["type"] == "text":
            whole["text"] = "".join(d["text"] for d in self.deltas)
        elif whole["type"] == "thinking":
            whole["thinking"] = "".join(d["thinking"] for d in self.deltas if d["type"] == "thinking_delta")
            whole["signature"] = "".join(d["signature"] for d in self.deltas if d["type"] == "signature_delta")
        elif whole["type"] == "tool_use":
            arguments = "".join(d["partial_json"] for d in self.deltas)
            whole["input"] = json.loads(arguments) if arguments else {}
        return whole


@dataclass
class _Script:
    blocks: list[_Block]
    stop_reason: str
    output_tokens: int
    stop_sequence: str | None = None
    cache_read: int = 0


def _text_block(parts: list[str]) -> _Block:
    return _Block({"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in parts])


def _script(model: str, body: dict[str, Any]) -> _Script | None:
    tokens = OUTPUT_TOKENS.get(model, 0)
    if model == "text":
        return _Script([_text_block(TEXT_PARTS)], "end_turn", tokens, cache_read=CACHE_READ_TOKENS)
    if model == "tools":
        blocks = [_text_block(TOOL_TEXT_PARTS)]
        for call_id, name, fragments in TOOL_CALLS:
            deltas = [{"type": "input_json_delta", "partial_json": f} for f in fragments]
            blocks.append(_Block({"type": "tool_use", "id": call_id, "name": name, "input": {}}, deltas))
        return _Script(blocks, "tool_use", tokens)
    if model == "thinking":
        steps: list[dict[str, Any]] = [{"type": "thinking_delta", "thinking": p} for p in THINKING_PARTS]
        steps.append({"type": "signature_delta", "signature": SIGNATURE})
        thinking = _Block({"type": "thinking", "thinking": "", "signature": ""}, steps)
        return _Script([thinking, _text_block(THINKING_TEXT_PARTS)], "end_turn", tokens)
    if model == "length":
        return _Script([_text_block(["Once upon", " a time"])], "max_tokens", tokens)
    if model == "stop-sequence":
        stop = (body.get("stop_sequences") or ["END"])[0]
        return _Script([_text_block(["Counting: 1,", " 2, 3"])], "stop_sequence", tokens, stop_sequence=stop)
    if model == "refusal":
        return _Script([_text_block(["I can't help with that."])], "refusal", tokens)
    return None


def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """Anthropic's error body, with the ``request-id`` header every answer carries."""
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}
    return web.json_response(
        body, status=status, headers={"request-id": "req_011CSHoEeqs5C35K2UUqR7Fy", **(headers or {})}
    )


def _invalid(message: str) -> web.Response:
    return error_response(400, "invalid_request_error", message)


def _check_headers(request: web.Request, api_key: str | None) -> web.Response | None:
    key = request.headers.get("x-api-key")
    if not key:
        return error_response(401, "authentication_error", "x-api-key header is required")
    if api_key is not None and key != api_key:
        return error_response(401, "authentication_error", "invalid x-api-key")
    if not request.headers.get("anthropic-version"):
        return _invalid("anthropic-version: header is required")
    return None


def _check_messages(messages: Any) -> str | None:
    """The API's complaint about ``messages``, or None when it would accept them."""
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    previous_tool_ids: set[str] = set()
    previous_role = ""
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "system":
            return (
                'messages: Unexpected role "system". The Messages API accepts a top-level `system` parameter, '
                'not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if role == previous_role:
            return (
                'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row'
            )
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list) or not blocks:
            return (
                f"messages.{i}: all messages must have non-empty content "
                "except for the optional final assistant message"
            )
        tool_ids: set[str] = set()
        answered: set[str] = set()
        for j, block in enumerate(blocks):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and not block.get("text"):
                return "messages: text content blocks must be non-empty"
            if kind == "tool_use":
                if role != "assistant":
                    return f"messages.{i}.content.{j}: `tool_use` blocks may only appear in assistant messages"
                if not isinstance(block.get("input"), dict):
                    return f"messages.{i}.content.{j}.tool_use.input: Input should be a valid dictionary"
                tool_ids.add(str(block.get("id")))
            if kind == "tool_result":
                if block.get("tool_use_id") not in previous_tool_ids:
                    return (
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                        "`tool_use` block in the previous message."
                    )
                answered.add(str(block["tool_use_id"]))
            if kind not in ("text", "tool_use", "tool_result", "image", "document", "thinking", "redacted_thinking"):
                return f"messages.{i}.content.{j}.type: Input tag '{kind}' found using 'type' matches no expected tag"
        if previous_tool_ids - answered:
            missing = ", ".join(sorted(previous_tool_ids - answered))
            return (
                f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                f"{missing}. Each `tool_use` block must have a corresponding `tool_result` block in the next message."
            )
        previous_tool_ids, previous_role = tool_ids, role
    last = messages[-1]
    if last.get("role") == "assistant" and _text_of(last).rstrip() != _text_of(last):
        return "messages: final assistant content cannot end with trailing whitespace"
    return None


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(b.get("text") or "" for b in content or [] if isinstance(b, dict) and b.get("type") == "text")


def story_events(model: str, text: str = story.STORY) -> list[tuple[bytes, str]]:
    """The SSE events of a story stream, each with the answer text it carries."""
    usage = story.CONTINUE_USAGE if model == "story-continue" else story.STORY_USAGE
    start = _message(model, [], None, 1)
    start["usage"]["input_tokens"] = usage["prompt_tokens"]
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    events = [
        (story.data({"type": "message_start", "message": start}, "message_start"), ""),
        (story.data({"type": "ping"}, "ping"), ""),
        (story.data(block, "content_block_start"), ""),
    ]
    for piece in story.pieces(text):
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
        events.append((story.data(delta, "content_block_delta"), piece))
    delta = {"stop_reason": "end_turn", "stop_sequence": None}
    events += [
        (story.data({"type": "content_block_stop", "index": 0}, "content_block_stop"), ""),
        (
            story.data(
                {"type": "message_delta", "delta": delta, "usage": {"output_tokens": usage["completion_tokens"]}},
                "message_delta",
            ),
            "",
        ),
        (story.data({"type": "message_stop"}, "message_stop"), ""),
    ]
    return events


async def _stream_story(
    request: web.Request, upstream: Upstream, model: str, body: dict[str, Any]
) -> web.Response | web.StreamResponse:
    text = story.STORY
    messages = body["messages"]
    if model == "story-continue" and messages[-1]["role"] == "assistant":
        asked = (_text_of(messages[-1]), True)
    elif model == "story-continue" and len(messages) >= 2 and messages[-2]["role"] == "assistant":
        asked = (_text_of(messages[-2]), False)
    else:
        asked = None
    if asked is not None:
        upstream.state.setdefault("continued", []).append(asked)
        rest = story.continuation(*asked)
        if rest is None:
            return _invalid("the double's story-continue: the prefix to continue is not the story's start")
        text = rest
    whole = b"".join(event for event, _ in story_events(model, text))
    cut = story.cut_at(body)
    if cut is not None and model == "story":
        whole = whole[:cut]
    response = await start_stream(request, "text/event-stream; charset=utf-8")
    await write_or_notice(response, whole, upstream)
    return response


def _check_body(body: Any) -> str | None:
    """The API's complaint about the request body, or None when it would accept it."""
    if not isinstance(body, dict):
        return "body: Input should be a valid dictionary"
    for name in ("model", "messages", "max_tokens"):
        if name not in body:
            return f"{name}: Field required"
    max_tokens = body["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Input should be a valid integer greater than or equal to 1"
    if "system" in body and not isinstance(body["system"], str | list):
        return "system: Input should be a valid string or list"
    stop = body.get("stop_sequences")
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        return "stop_sequences: Input should be a valid list of strings"
    for k, tool in enumerate(body.get("tools") or []):
        if not tool.get("name"):
            return f"tools.{k}.custom.name: Field required"
        if not isinstance(tool.get("input_schema"), dict):
            return f"tools.{k}.custom.input_schema: Field required"
    choice = body.get("tool_choice")
    if choice is not None and (
        not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none")
    ):
        return "tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
    if isinstance(choice, dict) and choice.get("type") == "tool" and not choice.get("name"):
        return "tool_choice.tool.name: Field required"
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
            return "thinking: Input tag does not match any of the expected tags: 'enabled', 'disabled'"
        if thinking["type"] == "enabled":
            budget = thinking.get("budget_tokens")
            if not isinstance(budget, int) or budget < MIN_THINKING_BUDGET:
                return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
            if budget >= max_tokens:
                return "`max_tokens` must be greater than `thinking.budget_tokens`."
    return _check_messages(body["messages"])


def _message(model: str, content: list[dict[str, Any]], script: _Script | None, output_tokens: int) -> dict[str, Any]:
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": script.stop_reason if script and content else None,
        "stop_sequence": script.stop_sequence if script and content else None,
        "usage": {
            "input_tokens": INPUT_TOKENS,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": script.cache_read if script else 0,
            "output_tokens": output_tokens,
        },
    }


async def _stream_script(request: web.Request, upstream: Upstream, model: str, script: _Script) -> web.StreamResponse:
    response = await start_stream(request, "text/event-stream; charset=utf-8")
    start = {"type": "message_start", "message": _message(model, [], script, 1)}
    events: list[bytes] = [sse(start, "message_start"), sse({"type": "ping"}, "ping")]
    for index, block in enumerate(script.blocks):
        events.append(
            sse({"type": "content_block_start", "index": index, "content_block": block.start}, "content_block_start")
        )
        for delta in block.deltas:
            events.append(sse({"type": "content_block_delta", "index": index, "delta": delta}, "content_block_delta"))
        events.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
        events.append(sse({"type": "ping"}, "ping"))
    usage = {"output_tokens": script.output_tokens}
    delta = {"stop_reason": script.stop_reason, "stop_sequence": script.stop_sequence}
    events.append(sse({"type": "message_delta", "delta": delta, "usage": usage}, "message_delta"))
    events.append(sse({"type": "message_stop"}, "message_stop"))
    upstream.streaming.set()
    for event in events:
        if not await write_or_notice(response, event, upstream):
            return response
    return response


async def _stream_broken(request: web.Request, upstream: Upstream, model: str, delay_s: float) -> web.StreamResponse:
    """``overloaded-midstream``, ``cut``, ``slow`` and ``pinging``: a 200 whose stream fails, stops, drags
    on, or goes silent but for pings."""
    response = await start_stream(request, "text/event-stream; charset=utf-8")
    opening = [
        sse({"type": "message_start", "message": _message(model, [], None, 1)}, "message_start"),
        sse({"type": "ping"}, "ping"),
        sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start",
        ),
    ]
    for event in opening:
        if not await write_or_notice(response, event, upstream):
            return response
    ticks = 1200 if model == "slow" else 2
    for n in range(ticks):
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f"tick {n} "}}
        if not await write_or_notice(response, sse(delta, "content_block_delta"), upstream):
            return response
        upstream.streaming.set()
        if model == "slow":
            await asyncio.sleep(delay_s)
    if model == "pinging":
        for _ in range(1200):
            if not await write_or_notice(response, sse({"type": "ping"}, "ping"), upstream):
                return response
            await asyncio.sleep(0.05)
    if model == "overloaded-midstream":
        error = {"type": "error", "error": {"details": None, "type": "overloaded_error", "message": "Overloaded"}}
        await write_or_notice(response, sse(error, "error"), upstream)
    elif model == "slow":
        closing = [
            sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": ticks},
                },
                "message_delta",
            ),
            sse({"type": "message_stop"}, "message_stop"),
        ]
        for event in closing:
            if not await write_or_notice(response, event, upstream):
                return response
    return response  # "cut": the body ends cleanly, but without message_stop


def routes(
    *,
    api_key: str | None = None,
    models: list[str] | None = None,
    list_models: bool = True,
    max_limit: int = 1000,
    delay_s: float = 0.05,
    prefix: str = "/v1",
) -> dict[tuple[str, str], Handler]:
    """Routes for ``harness.serve``: POST ``{prefix}/messages``; GET ``{prefix}/models`` unless ``list_models`` is off.

    ``api_key``: when given, any other key is a 401; ``models``: what the listing
    returns (``DEFAULT_MODELS``), 20 a page unless ``limit`` asks for more, at most
    ``max_limit`` (the API's is 1000; lower it to make clients follow ``has_more``);
    ``delay_s``: the pause between the ``slow`` model's deltas.
    """

    async def messages(request: web.Request, upstream: Upstream) -> web.StreamResponse:
        rejected = _check_headers(request, api_key)
        if rejected is not None:
            return rejected
        try:
            body: Any = await request.json()
        except json.JSONDecodeError:
            return _invalid("There was an error parsing the body of your request: invalid JSON")
        problem = _check_body(body)
        if problem is not None:
            return _invalid(problem)
        model = str(body["model"])
        stream = bool(body.get("stream"))
        if model == "rate-limited":
            message = (
                "This request would exceed the rate limit for your organization of 50,000 input tokens per minute. "
                "For details, refer to: https://docs.claude.com/en/api/rate-limits."
            )
            return error_response(429, "rate_limit_error", message, {"retry-after": "7"})
        if model == "auth":
            return error_response(401, "authentication_error", f"invalid x-api-key: {request.headers['x-api-key']}")
        if model == "overloaded" or (model == "overloaded-midstream" and not stream):
            return error_response(529, "overloaded_error", "Overloaded")
        if model == "too-long":
            return _invalid("prompt is too long: 215734 tokens > 200000 maximum")
        if model in ("story", "story-continue"):
            if not stream:
                return _invalid(f"the double's model '{model}' only streams")
            return await _stream_story(request, upstream, model, body)
        if model in ("overloaded-midstream", "cut", "slow", "pinging"):
            if not stream:
                return _invalid(f"the double's model '{model}' only streams")
            return await _stream_broken(request, upstream, model, delay_s)
        script = _script(model, body)
        if script is None:
            return error_response(404, "not_found_error", f"model: {model}")
        if stream:
            return await _stream_script(request, upstream, model, script)
        content = [block.complete() for block in script.blocks]
        return web.json_response(_message(model, content, script, script.output_tokens))

    async def list_handler(request: web.Request, upstream: Upstream) -> web.StreamResponse:
        rejected = _check_headers(request, api_key)
        if rejected is not None:
            return rejected
        names = DEFAULT_MODELS if models is None else models
        limit = min(int(request.query.get("limit") or 20), max_limit)
        after = request.query.get("after_id")
        start = names.index(after) + 1 if after in names else 0
        page = names[start : start + limit]
        data = [
            {"type": "model", "id": name, "display_name": name, "created_at": "2025-05-22T00:00:00Z"} for name in page
        ]
        return web.json_response(
            {
                "data": data,
                "has_more": start + limit < len(names),
                "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None,
            }
        )

    table: dict[tuple[str, str], Handler] = {("POST", f"{prefix}/messages"): messages}
    if list_models:
        table[("GET", f"{prefix}/models")] = list_handler
    return table
