"""Ollama's native API (``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/tags``).

Native rather than Ollama's OpenAI-compatible ``/v1`` because only the native
API carries ``think``, schema-constrained ``format``, ``options`` such as
``num_ctx`` (through ``raw_provider_options``) and the model-listing endpoint
the registry refreshes from.

Streams are NDJSON (``application/x-ndjson``): one JSON object per line, each
with a ``message`` (chat) or a ``response`` (generate) fragment and
``done: false``; the last line has ``done: true``, ``done_reason`` and the
token counts and durations (nanoseconds).  Tool calls arrive whole, with the
arguments as a JSON object and usually no id, so each becomes Start, one
Delta and End at once, under a synthesized id.  An ``{"error": …}`` line is a
failure after HTTP 200; a stream that stops before ``done: true`` is one too.

Ollama runs on the user's own machine, so its two commonest failures get
messages that say what to do: nothing listening (start ``ollama serve``) and
a model that was never pulled (run ``ollama pull``; never pulled for them,
since a pull can be many gigabytes).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import httpx

from ratatoskr_client.errors import InvalidArgument, NotFound, RatatoskrError, Unavailable
from ratatoskr_client.types import (
    ChatEvent,
    ChatOptions,
    ChatResult,
    ContentDelta,
    Done,
    EmbedResult,
    GenerateResult,
    Message,
    ReasoningDelta,
    Timing,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
    UsageEvent,
)
from ratatoskr_server.providers.base import HttpProvider, embed_result
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.providers.continuation import PREFILL, PROMPT, prefilled, prompted
from ratatoskr_server.providers.errors import (
    error_from_exception,
    error_from_status,
    error_in_stream,
    json_object,
    upstream_message,
)
from ratatoskr_server.providers.streaming import relay
from ratatoskr_server.redact import scrub

_NS_PER_MS = 1_000_000


def usage_from_ollama(data: dict[str, Any]) -> Usage | None:
    """Tokens from a final object; None when it has no counts (Ollama omits a zero prompt count)."""
    if "prompt_eval_count" not in data and "eval_count" not in data:
        return None
    prompt, completion = int(data.get("prompt_eval_count") or 0), int(data.get("eval_count") or 0)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def timing_from_ollama(data: dict[str, Any]) -> Timing:
    """Ollama's own durations: the model's load counts as queueing, prompt and generation as inference."""
    inference = int(data.get("prompt_eval_duration") or 0) + int(data.get("eval_duration") or 0)
    return Timing(
        queue_ms=int(data.get("load_duration") or 0) / _NS_PER_MS,
        inference_ms=inference / _NS_PER_MS,
        total_ms=int(data.get("total_duration") or 0) / _NS_PER_MS,
        input_tokens=int(data.get("prompt_eval_count") or 0),
        output_tokens=int(data.get("eval_count") or 0),
    )


def _arguments_object(provider: str, call: ToolCall) -> dict[str, Any]:
    """Ollama takes a tool call's arguments as an object, not the JSON text the domain keeps."""
    if not call.arguments.strip():
        return {}
    try:
        value = json.loads(call.arguments)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidArgument(
            f"{provider}: the arguments of tool call '{call.id or call.name}' must be a JSON object for Ollama"
        )
    return value


def messages_to_ollama(provider: str, messages: Sequence[Message]) -> list[dict[str, Any]]:
    # Tool results name the function they answer (Ollama has no call ids); recover it from the call's id.
    names = {t.id: t.name for m in messages for t in m.tool_calls if t.id}
    out: list[dict[str, Any]] = []
    for m in messages:
        item: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            item["tool_calls"] = [
                {"function": {"name": t.name, "arguments": _arguments_object(provider, t)}} for t in m.tool_calls
            ]
        if m.role == "tool":
            tool_name = m.name or names.get(m.tool_call_id, "")
            if tool_name:
                item["tool_name"] = tool_name
        out.append(item)
    return out


def options_to_ollama(o: ChatOptions, *, tools: bool) -> dict[str, Any]:
    """The request fields for ``o``; unset options are left out so the model's own defaults apply.

    ``raw_provider_options`` is merged last, except that an ``options`` object in it is merged into
    the sampling options rather than replacing them (``{"options": {"num_ctx": 8192}}`` keeps the rest).
    """
    sampling: dict[str, Any] = {}
    for name in ("temperature", "top_p", "top_k", "seed"):
        value = getattr(o, name)
        if value is not None:
            sampling[name] = value
    if o.max_tokens is not None:
        sampling["num_predict"] = o.max_tokens
    if o.stop:
        sampling["stop"] = list(o.stop)
    body: dict[str, Any] = {}
    if tools and o.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters or {"type": "object", "properties": {}},
                },
            }
            for t in o.tools
        ]
    if o.response_format is not None:
        f = o.response_format
        if f.type == "json_schema":
            body["format"] = f.json_schema or {}
        elif f.type == "json_object":
            body["format"] = "json"
    if o.reasoning is not None:
        body["think"] = o.reasoning.effort != "none"
    raw = dict(o.raw_provider_options)
    extra = raw.pop("options", None)
    if isinstance(extra, dict):
        sampling.update(extra)
    body.update(raw)
    if sampling:
        body["options"] = sampling
    return body


class _StreamState:
    """Turns NDJSON lines into events: whole tool calls numbered in order, the final line kept for the end."""

    def __init__(self) -> None:
        self.calls = 0
        self.final: dict[str, Any] | None = None

    def events(self, line: dict[str, Any], exclude_reasoning: bool) -> list[ChatEvent]:
        # Chat lines carry a "message"; generate lines carry "response" and "thinking" at the top level.
        message = line.get("message")
        part: dict[str, Any] = message if isinstance(message, dict) else line
        out: list[ChatEvent] = []
        thinking = part.get("thinking")
        if isinstance(thinking, str) and thinking and not exclude_reasoning:
            out.append(ReasoningDelta(thinking))
        text = part.get("content") if isinstance(message, dict) else line.get("response")
        if isinstance(text, str) and text:
            out.append(ContentDelta(text))
        for call in part.get("tool_calls") or []:
            index = self.calls
            self.calls += 1
            function = call.get("function") or {}
            out.append(ToolCallStart(index=index, id=call.get("id") or f"call_{index}", name=function.get("name", "")))
            out.append(ToolCallDelta(index=index, arguments=json.dumps(function.get("arguments") or {})))
            out.append(ToolCallEnd(index))
        if line.get("done"):
            self.final = line
        return out

    def closing(self) -> list[ChatEvent]:
        final = self.final or {}
        out: list[ChatEvent] = []
        usage = usage_from_ollama(final)
        if usage is not None:
            out.append(UsageEvent(usage))
        out.append(Done(finish_reason=_finish_reason(final, self.calls > 0), timing=timing_from_ollama(final)))
        return out


def _finish_reason(final: dict[str, Any], called_tools: bool) -> str:
    # Ollama says "stop" after a tool call; callers need "tool_calls" to know they must run the tools.
    if called_tools:
        return "tool_calls"
    return str(final.get("done_reason") or "stop")


class _OllamaWire:
    """Ollama's NDJSON: one object per line, ``{"error": …}`` inside the stream, ``done: true`` last."""

    def __init__(self, provider: str, secrets: list[str], exclude: bool) -> None:
        self.provider, self.secrets, self.exclude = provider, secrets, exclude
        self.state = _StreamState()

    def records(self, response: httpx.Response) -> AsyncIterator[str]:
        return response.aiter_lines()

    def events(self, raw: str) -> Iterable[ChatEvent]:
        if not raw.strip():
            return ()
        line = json.loads(raw)
        if not isinstance(line, dict):
            return ()
        error = line.get("error")
        if error:
            raise error_in_stream(self.provider, str(error), "", self.secrets)
        return self.state.events(line, self.exclude)

    @property
    def ended(self) -> bool:
        return self.state.final is not None

    @property
    def complete(self) -> bool:
        return self.state.final is not None

    def closing(self) -> Iterable[ChatEvent]:
        return self.state.closing()


class OllamaProvider(HttpProvider):
    kind = "ollama"
    capabilities = frozenset({Capability.CHAT, Capability.GENERATE, Capability.EMBED})
    supported_parameters = frozenset(
        {"temperature", "max_tokens", "top_p", "top_k", "stop", "seed", "tools", "response_format", "reasoning"}
    )

    def url(self, path: str) -> str:
        return self.settings.base_url.rstrip("/") + path

    def _transport_error(self, url: str, err: httpx.HTTPError) -> RatatoskrError:
        """Nothing listening is the usual state of a local Ollama that was not started: say how to start it."""
        if isinstance(err, httpx.ConnectError):
            detail = "connection refused" if "refused" in str(err).lower() else f"cannot connect: {err}"
            base = self.settings.base_url.rstrip("/")
            text = f"{self.name}: Ollama is not running at {base} ({detail}); start it with `ollama serve`"
            return Unavailable(scrub(text, self.secrets))
        return error_from_exception(self.name, url, err, self.secrets)

    def _status_error(self, status: int, body: str, headers: httpx.Headers, model: str) -> RatatoskrError:
        """A model that was never pulled gets the command that fixes it; everything else goes to the table."""
        message, _ = upstream_message(body)
        lowered = message.lower()
        if status == 404 and model and "model" in lowered and "not found" in lowered:
            return NotFound(scrub(f"{self.name}: {message}; run `ollama pull {model}`", self.secrets))
        return error_from_status(self.name, status, body, headers, self.secrets)

    def _body(self, model: str, options: ChatOptions, *, tools: bool, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model}
        body.update(fields)
        body.update(options_to_ollama(options, tools=tools))
        return body

    async def _post(self, path: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.url(path)
        try:
            response = await self.client.post(url, json=body, params=self.settings.query)
        except httpx.HTTPError as err:
            raise self._transport_error(url, err) from None
        if response.status_code != 200:
            raise self._status_error(response.status_code, response.text, response.headers, model)
        data = await json_object(self.name, response, self.secrets)
        return data

    def _stream(self, path: str, model: str, body: dict[str, Any], exclude: bool) -> AsyncIterator[ChatEvent]:
        url = self.url(path)

        def transport_error(err: Exception) -> RatatoskrError:
            if isinstance(err, httpx.HTTPError):
                return self._transport_error(url, err)
            return error_from_exception(self.name, url, err, self.secrets)

        return relay(
            self.client,
            url,
            body,
            self.settings.query,
            _OllamaWire(self.name, self.secrets, exclude),
            status_error=lambda status, text, headers: self._status_error(status, text, headers, model),
            transport_error=transport_error,
            provider=self.name,
            idle_timeout_s=self.settings.stream_idle_timeout_s,
        )

    async def chat(self, model: str, messages: Sequence[Message], options: ChatOptions) -> ChatResult:
        body = self._body(model, options, tools=True, messages=messages_to_ollama(self.name, messages), stream=False)
        data = await self._post("/api/chat", model, body)
        message = data.get("message") or {}
        calls = [
            ToolCall(
                id=c.get("id") or f"call_{i}",
                name=(c.get("function") or {}).get("name", ""),
                arguments=json.dumps((c.get("function") or {}).get("arguments") or {}),
            )
            for i, c in enumerate(message.get("tool_calls") or [])
        ]
        exclude = bool(options.reasoning and options.reasoning.exclude)
        return ChatResult(
            message=Message(role="assistant", content=message.get("content") or "", tool_calls=calls),
            finish_reason=_finish_reason(data, bool(calls)),
            usage=usage_from_ollama(data) or Usage(),
            timing=timing_from_ollama(data),
            model=data.get("model") or model,
            reasoning="" if exclude else str(message.get("thinking") or ""),
        )

    def chat_stream(self, model: str, messages: Sequence[Message], options: ChatOptions) -> AsyncIterator[ChatEvent]:
        body = self._body(model, options, tools=True, messages=messages_to_ollama(self.name, messages), stream=True)
        return self._stream("/api/chat", model, body, bool(options.reasoning and options.reasoning.exclude))

    def continuation_mode(self, model: str) -> str:
        """A request to continue: every model's template takes it."""
        return PROMPT

    def continue_stream(
        self, model: str, messages: Sequence[Message], partial: str, mode: str, options: ChatOptions
    ) -> AsyncIterator[ChatEvent]:
        """Prefill: /api/chat renders a trailing assistant message as the open turn the model extends."""
        turns = prefilled(messages, partial) if mode == PREFILL else prompted(messages, partial)
        body = self._body(model, options, tools=True, messages=messages_to_ollama(self.name, turns), stream=True)
        return self._stream("/api/chat", model, body, bool(options.reasoning and options.reasoning.exclude))

    async def generate(self, model: str, prompt: str, options: ChatOptions) -> GenerateResult:
        data = await self._post(
            "/api/generate", model, self._body(model, options, tools=False, prompt=prompt, stream=False)
        )
        return GenerateResult(
            text=data.get("response") or "",
            finish_reason=_finish_reason(data, False),
            usage=usage_from_ollama(data) or Usage(),
            timing=timing_from_ollama(data),
            model=data.get("model") or model,
        )

    def generate_stream(self, model: str, prompt: str, options: ChatOptions) -> AsyncIterator[ChatEvent]:
        body = self._body(model, options, tools=False, prompt=prompt, stream=True)
        return self._stream("/api/generate", model, body, bool(options.reasoning and options.reasoning.exclude))

    async def embed(
        self, model: str, inputs: Sequence[str], *, truncate: bool = True, deadline: float | None = None
    ) -> EmbedResult:
        """The upstream truncates (or refuses) by its own rules; ``deadline`` is the caller's to enforce."""
        return await embed_result(self.name, f"{self.name}/{model}", inputs, await self.embed_vectors(model, inputs))

    async def embed_vectors(self, model: str, inputs: Sequence[str]) -> list[list[float]]:
        data = await self._post("/api/embed", model, {"model": model, "input": list(inputs)})
        rows = data.get("embeddings") or []
        if len(rows) != len(inputs):
            # Vectors are matched to inputs by position: a short answer would pair the wrong ones.
            raise Unavailable(f"{self.name}: asked for {len(inputs)} embeddings, got {len(rows)}")
        # Millions of floats for a big batch: converted off the event loop.
        return await asyncio.to_thread(lambda: [[float(x) for x in row] for row in rows])

    async def list_models(self) -> list[str]:
        url = self.url("/api/tags")
        try:
            response = await self.client.get(url, params=self.settings.query)
        except httpx.HTTPError as err:
            raise self._transport_error(url, err) from None
        if response.status_code != 200:
            raise error_from_status(self.name, response.status_code, response.text, response.headers, self.secrets)
        answer = await json_object(self.name, response, self.secrets)
        listed = [str(m.get("name")) for m in answer.get("models") or [] if isinstance(m, dict) and m.get("name")]
        return sorted(set(listed) | set(self.settings.models))
