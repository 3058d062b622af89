"""OpenAI's JSON ⇄ the domain types, on the server side of the format.

Requests are read strictly enough to refuse what would otherwise be quietly wrong (``n`` > 1,
image parts, token-array inputs): a 400 naming the field beats an answer to a different question.
Answers are built with the exact shapes OpenAI sends (ids, ``object``, ``created``, choices with
``logprobs: null``, usage with its details), because SDKs validate them.  Our own metadata (notes,
model metadata) goes in a ``ratatoskr`` extension field, which SDKs keep as an extra attribute.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from enum import Enum
from typing import Any

from ratatoskr_client.errors import InvalidArgument
from ratatoskr_client.types import (
    ChatOptions,
    ChatResult,
    ContentDelta,
    Done,
    EmbedResult,
    GenerateResult,
    Message,
    ModelMetadata,
    Notes,
    ReasoningDelta,
    ReasoningOptions,
    ResponseFormat,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    ToolDefinition,
    Usage,
    UsageEvent,
)

Json = dict[str, Any]


# -- reading requests ---------------------------------------------------------------------------


def _field(body: Mapping[str, Any], name: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
    """``body[name]`` when present and of the right JSON kind, ``default`` when absent or null."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise InvalidArgument(f"{name}: expected {_kind_names(kinds)}, got a boolean")
    if not isinstance(value, kinds):
        raise InvalidArgument(f"{name}: expected {_kind_names(kinds)}, got {type(value).__name__}")
    return value


def _kind_names(kinds: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "an array",
        dict: "an object",
    }
    return " or ".join(names.get(k, k.__name__) for k in (kinds if isinstance(kinds, tuple) else (kinds,)))


def _number(body: Mapping[str, Any], name: str) -> float | None:
    value = _field(body, name, (int, float))
    return None if value is None else float(value)


def require_object(body: object) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return body


def _content(value: object, where: str) -> str:
    """A message's content: a string, or content parts of which only text ones are taken."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise InvalidArgument(f"{where}.content: expected a string or an array of content parts")
    texts = []
    for i, part in enumerate(value):
        if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise InvalidArgument(f"{where}.content[{i}]: only text parts are supported here, not {kind!r}")
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidArgument(f"{where}.content[{i}].text: expected a string")
        texts.append(text)
    return "".join(texts)


def _tool_calls(value: object, where: str) -> list[ToolCall]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"{where}.tool_calls: expected an array")
    calls = []
    for i, call in enumerate(value):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidArgument(
                f"{where}.tool_calls[{i}]: expected {{id, type: function, function: {{name, arguments}}}}"
            )
        arguments = function.get("arguments") or ""
        calls.append(ToolCall(id=str(call.get("id") or ""), name=function["name"], arguments=str(arguments)))
    return calls


def messages_from_json(value: object) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise InvalidArgument("messages: expected a non-empty array of messages")
    out = []
    for i, raw in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("role"), str):
            raise InvalidArgument(f"{where}: expected an object with a role")
        role = "system" if raw["role"] == "developer" else raw["role"]
        out.append(
            Message(
                role=role,
                content=_content(raw.get("content"), where),
                tool_calls=_tool_calls(raw.get("tool_calls"), where),
                name=str(raw.get("name") or ""),
                tool_call_id=str(raw.get("tool_call_id") or ""),
            )
        )
    return out


def _tools(value: object) -> list[ToolDefinition]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument("tools: expected an array")
    tools = []
    for i, tool in enumerate(value):
        function = (
            tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
        )
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidArgument(
                f"tools[{i}]: expected {{type: function, function: {{name, description, parameters}}}}"
            )
        parameters = function.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidArgument(f"tools[{i}].function.parameters: expected a JSON Schema object")
        tools.append(
            ToolDefinition(
                name=function["name"],
                description=str(function.get("description") or ""),
                parameters=parameters,
                strict=bool(function.get("strict")),
            )
        )
    return tools


def _tool_choice(value: object) -> ToolChoice | None:
    if value is None:
        return None
    if value in ("auto", "none", "required"):
        return ToolChoice(mode=value)
    if isinstance(value, dict) and isinstance(value.get("function"), dict):
        name = value["function"].get("name")
        if isinstance(name, str) and name:
            return ToolChoice(mode="function", function=name)
    raise InvalidArgument('tool_choice: expected "auto", "none", "required" or {type: function, function: {name}}')


def _response_format(value: object) -> ResponseFormat | None:
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in ("text", "json_object"):
        return ResponseFormat(type=kind)
    if kind == "json_schema" and isinstance(value, dict):
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise InvalidArgument("response_format.json_schema: expected {name, schema, strict}")
        return ResponseFormat(
            type="json_schema",
            schema_name=str(spec.get("name") or ""),
            json_schema=spec.get("schema"),
            strict=bool(spec.get("strict")),
        )
    raise InvalidArgument('response_format.type: expected "text", "json_object" or "json_schema"')


def _stop(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise InvalidArgument("stop: expected a string or an array of strings")


def options_from_json(body: Mapping[str, Any]) -> ChatOptions:
    """Generation options of a chat or completions request; ``logit_bias`` and ``top_k`` pass to the
    provider as they are (the parameter stage drops or refuses what the target cannot take)."""
    n = _field(body, "n", int, 1)
    if n != 1:
        raise InvalidArgument("n: only 1 choice per request is supported")
    max_tokens = _field(body, "max_completion_tokens", int)
    if max_tokens is None:
        max_tokens = _field(body, "max_tokens", int)
    raw: dict[str, Any] = {}
    logit_bias = _field(body, "logit_bias", dict)
    if logit_bias:
        raw["logit_bias"] = logit_bias
    effort = _field(body, "reasoning_effort", str)
    return ChatOptions(
        model=_field(body, "model", str, ""),
        temperature=_number(body, "temperature"),
        max_tokens=max_tokens,
        top_p=_number(body, "top_p"),
        top_k=_field(body, "top_k", int),
        stop=_stop(body.get("stop")),
        frequency_penalty=_number(body, "frequency_penalty"),
        presence_penalty=_number(body, "presence_penalty"),
        seed=_field(body, "seed", int),
        tools=_tools(body.get("tools")),
        tool_choice=_tool_choice(body.get("tool_choice")),
        response_format=_response_format(body.get("response_format")),
        reasoning=ReasoningOptions(effort=effort) if effort else None,
        parallel_tool_calls=_field(body, "parallel_tool_calls", bool),
        raw_provider_options=raw,
    )


def stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    """(``stream``, ``stream_options.include_usage``)."""
    stream = bool(_field(body, "stream", bool, False))
    options = _field(body, "stream_options", dict, {})
    return stream, bool(options.get("include_usage"))


def prompts_from_json(body: Mapping[str, Any], limit: int) -> list[str]:
    """The prompts of ``/v1/completions``: one string, or an array of up to ``limit`` strings, each
    answered as its own choice (token arrays are refused: we would have to guess the tokenizer)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, list) or not prompt or not all(isinstance(p, str) for p in prompt):
        raise InvalidArgument(
            "prompt: expected a string or a non-empty array of strings (token arrays are not supported)"
        )
    if len(prompt) > limit:
        raise InvalidArgument(
            f"prompt: {len(prompt)} prompts in one request, more than limits.max_inputs_per_request ({limit})"
        )
    return list(prompt)


def embed_inputs_from_json(body: Mapping[str, Any]) -> list[str]:
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidArgument("input: expected a string or a non-empty array of strings (token arrays are not supported)")


# -- writing answers ----------------------------------------------------------------------------


def usage_to_json(usage: Usage) -> Json:
    """OpenAI's usage object, details included (the inverse of the adapter's ``usage_from_openai``)."""
    total = usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": total,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def notes_to_json(notes: Notes) -> Json:
    return asdict(notes) if notes else {}


def _extension(provider: str, model: str, notes: Notes) -> Json:
    ext: Json = {"provider": provider, "model": model}
    if notes:
        ext["notes"] = notes_to_json(notes)
    return ext


def _tool_calls_json(calls: Sequence[ToolCall]) -> list[Json]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def chat_completion(result: ChatResult, request_id: str, model: str) -> Json:
    message: Json = {"role": "assistant", "content": result.message.content or None, "refusal": None}
    if result.message.tool_calls:
        message["tool_calls"] = _tool_calls_json(result.message.tool_calls)
    if result.reasoning:
        message["reasoning_content"] = result.reasoning
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model or result.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": result.finish_reason}],
        "usage": usage_to_json(result.usage),
        "ratatoskr": _extension(result.provider, result.model, result.notes),
    }


def text_completion(results: Sequence[GenerateResult], request_id: str, model: str, notes: Notes) -> Json:
    """One ``text_completion`` for one or several prompts: choice ``i`` answers prompt ``i``, and the
    usage is the sum of theirs, as OpenAI answers a batch."""
    first = results[0]
    usage = sum_usage(r.usage for r in results)
    choices = [
        {"index": i, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason} for i, r in enumerate(results)
    ]
    return {
        "id": f"cmpl-{request_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model or first.model,
        "choices": choices,
        "usage": usage_to_json(usage),
        "ratatoskr": _extension(first.provider, first.model, notes),
    }


class ChatChunks:
    """Turns one stream's domain events into OpenAI ``chat.completion.chunk`` objects.

    The role delta goes first; content and tool-call deltas follow by index; ``Done`` becomes the
    chunk with ``finish_reason``, then (with ``include_usage``) a ``choices: []`` chunk with usage.
    """

    def __init__(self, request_id: str, model: str, include_usage: bool) -> None:
        self.id = f"chatcmpl-{request_id}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.usage = Usage()

    def _chunk(self, delta: Json | None, finish: str | None = None) -> Json:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        out: Json = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            out["usage"] = None
        return out

    def first(self) -> Json:
        return self._chunk({"role": "assistant", "content": ""})

    def chunks(self, event: object) -> list[Json]:
        """The chunks one event becomes (none for a tool call's end or a usage event held for the end)."""
        if isinstance(event, ContentDelta):
            return [self._chunk({"content": event.text})] if event.text else []
        if isinstance(event, ReasoningDelta):
            return [self._chunk({"reasoning_content": event.text})] if event.text else []
        if isinstance(event, ToolCallStart):
            call = {"index": event.index, "id": event.id, "type": "function"}
            return [self._chunk({"tool_calls": [{**call, "function": {"name": event.name, "arguments": ""}}]})]
        if isinstance(event, ToolCallDelta):
            return [self._chunk({"tool_calls": [{"index": event.index, "function": {"arguments": event.arguments}}]})]
        if isinstance(event, UsageEvent):
            self.usage = event.usage
            return []
        if isinstance(event, Done):
            last = self._chunk({}, event.finish_reason or "stop")
            last["ratatoskr"] = _extension(event.provider, event.model, event.notes)
            out = [last]
            if self.include_usage:
                out.append({**self._chunk(None), "usage": usage_to_json(self.usage)})
            return out
        return []  # ToolCallEnd: OpenAI sends nothing for it


def _add_usage(a: Usage, b: Usage) -> Usage:
    return Usage(
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
        total_tokens=a.total_tokens + (b.total_tokens or b.prompt_tokens + b.completion_tokens),
        cached_tokens=a.cached_tokens + b.cached_tokens,
        reasoning_tokens=a.reasoning_tokens + b.reasoning_tokens,
        cost_usd=a.cost_usd + b.cost_usd,
    )


def sum_usage(usages: Iterable[Usage]) -> Usage:
    """The usage of several answers together (a batch of prompts, one stream per prompt)."""
    total = Usage()
    for usage in usages:
        total = _add_usage(total, usage)
    return total


class TextChunks:
    """The ``text_completion`` chunks of a streamed ``/v1/completions`` answer.

    Several prompts are answered one after another in one stream: each one's events carry its
    choice index, each ``Done`` but the last closes only its choice, and the usage chunk at the end
    holds the sum of theirs.
    """

    def __init__(self, request_id: str, model: str, include_usage: bool, prompts: int = 1) -> None:
        self.id = f"cmpl-{request_id}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.prompts = prompts
        self.index = 0
        self.usage = Usage()

    def _chunk(self, text: str, finish: str | None = None) -> Json:
        choice = {"index": self.index, "text": text, "logprobs": None, "finish_reason": finish}
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def chunks(self, event: object) -> list[Json]:
        if isinstance(event, ContentDelta):
            return [self._chunk(event.text)] if event.text else []
        if isinstance(event, UsageEvent):
            self.usage = _add_usage(self.usage, event.usage)
            return []
        if isinstance(event, Done):
            out = [self._chunk("", event.finish_reason or "stop")]
            self.index += 1
            if self.include_usage and self.index >= self.prompts:
                out.append({**self._chunk(""), "choices": [], "usage": usage_to_json(self.usage)})
            return out
        return []


def embeddings(result: EmbedResult, model: str, encoding: str) -> Json:
    """OpenAI's embeddings list; ``base64`` is each vector as little-endian float32 bytes."""
    data = []
    for i, vector in enumerate(result.vectors):
        embedding: object = vector
        if encoding == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    tokens = result.usage.prompt_tokens or sum(result.tokens)
    return {
        "object": "list",
        "data": data,
        "model": model or result.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "ratatoskr": {"model": result.model, "dimension": result.dimension, "normalized": result.normalized}
        | ({"notes": notes_to_json(result.notes)} if result.notes else {}),
    }


def model_json(meta: ModelMetadata) -> Json:
    """One model as ``/v1/models`` lists it, our metadata in ``ratatoskr``."""
    info = meta.info
    return {
        "id": info.id,
        "object": "model",
        "created": 0,
        "owned_by": info.provider or ("ratatoskr" if info.local else ""),
        "ratatoskr": _jsonable(asdict(meta)),
    }


def _jsonable(value: Any) -> Any:
    """``asdict`` output with enums and other plain-valued objects as JSON scalars."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
