"""OpenAI's chat-completions wire format, spoken by OpenAI and most servers that copy it.

OpenRouter, Together, Groq, Fireworks, DeepInfra, Anyscale, Modal, vLLM, TGI,
LocalAI, llama.cpp's server, llamafile, LM Studio and Azure OpenAI are all
configuration entries of this one adapter (base_url, key header, extra
headers and query parameters; Azure puts the deployment in the URL through
``{model}``).

Streams are SSE: ``data: {chunk}`` events ending with ``data: [DONE]``.  Tool
calls arrive as fragments keyed by ``index`` (the first carries id and name);
``stream_options.include_usage`` adds a last chunk with ``choices: []`` and
the usage.  Tolerated: ``choices: null`` (vLLM), no usage chunk, empty
content deltas (llama.cpp sends them for partial UTF-8 sequences).  A stream
that stops before ``[DONE]`` and before any finish reason is an error.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent

from ratatoskr_client.errors import Unavailable
from ratatoskr_client.types import (
    GENERATION_PARAMETERS,
    NUMERIC_PARAMETERS,
    ChatEvent,
    ChatOptions,
    ChatResult,
    ContentDelta,
    Done,
    EmbedResult,
    GenerateResult,
    Message,
    ReasoningDelta,
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
from ratatoskr_server.providers.errors import error_from_exception, error_from_status, error_in_stream, json_object
from ratatoskr_server.providers.streaming import relay


def usage_from_openai(data: dict[str, Any] | None) -> Usage | None:
    if not data:
        return None
    prompt_details = data.get("prompt_tokens_details") or {}
    completion_details = data.get("completion_tokens_details") or {}
    prompt, completion = int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=int(data.get("total_tokens") or prompt + completion),
        cached_tokens=int(prompt_details.get("cached_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
        cost_usd=float(data.get("cost") or 0.0),
    )


def messages_to_openai(messages: Sequence[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        item: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.name:
            item["name"] = m.name
        if m.tool_call_id:
            item["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            item["tool_calls"] = [
                {"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}
                for t in m.tool_calls
            ]
            if not m.content:
                item["content"] = None
        out.append(item)
    return out


def options_to_openai(o: ChatOptions) -> dict[str, Any]:
    """The request fields for ``o``; unset options are left out so the upstream's defaults apply."""
    body: dict[str, Any] = {}
    for name in NUMERIC_PARAMETERS:
        value = getattr(o, name)
        if value is not None:
            body[name] = value
    if o.stop:
        body["stop"] = list(o.stop)
    if o.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters or {"type": "object", "properties": {}},
                    **({"strict": True} if t.strict else {}),
                },
            }
            for t in o.tools
        ]
    if o.tool_choice is not None:
        c = o.tool_choice
        body["tool_choice"] = {"type": "function", "function": {"name": c.function}} if c.mode == "function" else c.mode
    if o.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = o.parallel_tool_calls
    if o.response_format is not None:
        f = o.response_format
        if f.type == "json_schema":
            schema = {"name": f.schema_name or "response", "schema": f.json_schema or {}, "strict": f.strict}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        else:
            body["response_format"] = {"type": f.type}
    if o.reasoning is not None and o.reasoning.effort:
        body["reasoning_effort"] = o.reasoning.effort
    body.update(o.raw_provider_options)
    return body


class _StreamState:
    """Turns chunks into events: tool-call fragments by index, finish reason, usage held for the end."""

    def __init__(self) -> None:
        self.open_calls: list[int] = []
        self.finish_reason = ""
        self.usage: Usage | None = None
        #: data: [DONE] was seen.
        self.ended = False

    def events(self, chunk: dict[str, Any], exclude_reasoning: bool) -> list[ChatEvent]:
        usage = usage_from_openai(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        out: list[ChatEvent] = []
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # n > 1 is not part of the contract
            delta = choice.get("delta") or choice  # /completions streams carry "text" on the choice
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning and not exclude_reasoning:
                out.append(ReasoningDelta(reasoning))
            text = delta.get("content") if "delta" in choice else choice.get("text")
            if isinstance(text, str) and text:
                out.append(ContentDelta(text))
            for call in delta.get("tool_calls") or []:
                index = int(call.get("index", 0))
                function = call.get("function") or {}
                if index not in self.open_calls:
                    self.open_calls.append(index)
                    out.append(ToolCallStart(index=index, id=call.get("id") or "", name=function.get("name") or ""))
                arguments = function.get("arguments")
                if arguments:
                    out.append(ToolCallDelta(index=index, arguments=arguments))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def closing(self) -> list[ChatEvent]:
        out: list[ChatEvent] = [ToolCallEnd(i) for i in self.open_calls]
        self.open_calls = []
        if self.usage is not None:
            out.append(UsageEvent(self.usage))
        out.append(Done(finish_reason=self.finish_reason or "stop"))
        return out


class _OpenAIWire:
    """Chat Completions SSE: ``data:`` chunks, ``{"error": …}`` inside the stream, ``[DONE]`` at the end."""

    def __init__(self, provider: str, secrets: list[str], exclude: bool) -> None:
        self.provider, self.secrets, self.exclude = provider, secrets, exclude
        self.state = _StreamState()

    def records(self, response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
        return EventSource(response).aiter_sse()

    def events(self, sse: ServerSentEvent) -> Iterable[ChatEvent]:
        data = sse.data.strip()
        if data == "[DONE]":
            self.state.ended = True
            return ()
        if not data:
            return ()
        chunk = json.loads(sse.data)
        error = chunk.get("error") if isinstance(chunk, dict) else None
        if error:
            message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
            code = str(error.get("code") or error.get("type") or "") if isinstance(error, dict) else ""
            raise error_in_stream(self.provider, message, code, self.secrets)
        return self.state.events(chunk, self.exclude)

    @property
    def ended(self) -> bool:
        return self.state.ended

    @property
    def complete(self) -> bool:
        return self.state.ended or bool(self.state.finish_reason)

    def closing(self) -> Iterable[ChatEvent]:
        return self.state.closing()


class OpenAICompatProvider(HttpProvider):
    kind = "openai_compat"
    capabilities = frozenset({Capability.CHAT, Capability.GENERATE, Capability.EMBED})
    #: Chat Completions carries every generation parameter.
    supported_parameters = frozenset(GENERATION_PARAMETERS)

    def url(self, path: str, model: str) -> str:
        return self.settings.base_url.rstrip("/").replace("{model}", model) + path

    def _body(self, model: str, options: ChatOptions, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {} if "{model}" in self.settings.base_url else {"model": model}
        body.update(fields)
        body.update(options_to_openai(options))
        return body

    async def _post(self, path: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.url(path, model)
        try:
            response = await self.client.post(url, json=body, params=self.settings.query)
        except httpx.HTTPError as err:
            raise error_from_exception(self.name, url, err, self.secrets) from None
        if response.status_code != 200:
            raise error_from_status(self.name, response.status_code, response.text, response.headers, self.secrets)
        data = await json_object(self.name, response, self.secrets)
        return data

    def _stream(self, path: str, model: str, body: dict[str, Any], exclude: bool) -> AsyncIterator[ChatEvent]:
        url = self.url(path, model)
        return relay(
            self.client,
            url,
            body,
            self.settings.query,
            _OpenAIWire(self.name, self.secrets, exclude),
            status_error=lambda status, text, headers: error_from_status(
                self.name, status, text, headers, self.secrets
            ),
            transport_error=lambda err: error_from_exception(self.name, url, err, self.secrets),
            provider=self.name,
            idle_timeout_s=self.settings.stream_idle_timeout_s,
        )

    async def chat(self, model: str, messages: Sequence[Message], options: ChatOptions) -> ChatResult:
        data = await self._post(
            "/chat/completions", model, self._body(model, options, messages=messages_to_openai(messages))
        )
        choice = (data.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        calls = [
            ToolCall(
                id=c.get("id") or "",
                name=(c.get("function") or {}).get("name", ""),
                arguments=(c.get("function") or {}).get("arguments", ""),
            )
            for c in message.get("tool_calls") or []
        ]
        exclude = bool(options.reasoning and options.reasoning.exclude)
        reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
        return ChatResult(
            message=Message(role="assistant", content=message.get("content") or "", tool_calls=calls),
            finish_reason=choice.get("finish_reason") or "stop",
            usage=usage_from_openai(data.get("usage")) or Usage(),
            model=data.get("model") or model,
            reasoning="" if exclude else str(reasoning),
        )

    def chat_stream(self, model: str, messages: Sequence[Message], options: ChatOptions) -> AsyncIterator[ChatEvent]:
        body = self._body(
            model,
            options,
            messages=messages_to_openai(messages),
            stream=True,
            stream_options={"include_usage": True},
        )
        return self._stream("/chat/completions", model, body, bool(options.reasoning and options.reasoning.exclude))

    def continuation_mode(self, model: str) -> str:
        """Completion-only models continue by prefill (their template with the answer appended); a
        chat endpoint gets a request to continue, which every OpenAI-compatible server takes."""
        if any(fnmatch.fnmatchcase(model, glob) for glob in self.settings.completion_only):
            return PREFILL
        return PROMPT

    def continue_stream(
        self, model: str, messages: Sequence[Message], partial: str, mode: str, options: ChatOptions
    ) -> AsyncIterator[ChatEvent]:
        """Prefill: the partial answer as a trailing assistant message the server extends (vLLM's
        ``continue_final_message``; llama.cpp's server prefills a trailing assistant message by
        itself).  Prompt: the partial answer and a user turn asking for the rest."""
        if mode == PREFILL:
            fields: dict[str, Any] = {
                "messages": messages_to_openai(prefilled(messages, partial)),
                "continue_final_message": True,
                "add_generation_prompt": False,
            }
        else:
            fields = {"messages": messages_to_openai(prompted(messages, partial))}
        body = self._body(model, options, **fields, stream=True, stream_options={"include_usage": True})
        return self._stream("/chat/completions", model, body, bool(options.reasoning and options.reasoning.exclude))

    async def generate(self, model: str, prompt: str, options: ChatOptions) -> GenerateResult:
        data = await self._post("/completions", model, self._body(model, options, prompt=prompt))
        choice = (data.get("choices") or [{}])[0]
        return GenerateResult(
            text=choice.get("text") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            usage=usage_from_openai(data.get("usage")) or Usage(),
            model=data.get("model") or model,
        )

    def generate_stream(self, model: str, prompt: str, options: ChatOptions) -> AsyncIterator[ChatEvent]:
        body = self._body(model, options, prompt=prompt, stream=True, stream_options={"include_usage": True})
        return self._stream("/completions", model, body, True)

    async def embed(
        self, model: str, inputs: Sequence[str], *, truncate: bool = True, deadline: float | None = None
    ) -> EmbedResult:
        """The upstream truncates (or refuses) by its own rules; ``deadline`` is the caller's to enforce."""
        return await embed_result(self.name, f"{self.name}/{model}", inputs, await self.embed_vectors(model, inputs))

    async def embed_vectors(self, model: str, inputs: Sequence[str]) -> list[list[float]]:
        body: dict[str, Any] = {"input": list(inputs)}
        if "{model}" not in self.settings.base_url:
            body["model"] = model
        data = await self._post("/embeddings", model, body)
        try:
            rows = sorted(data.get("data") or [], key=lambda d: d.get("index", 0))
            return await asyncio.to_thread(lambda: [[float(x) for x in row["embedding"]] for row in rows])
        except (AttributeError, KeyError, TypeError, ValueError):
            raise Unavailable(f"{self.name}: the embeddings answer does not have the expected shape") from None

    async def list_models(self) -> list[str]:
        if "{model}" in self.settings.base_url:
            return list(self.settings.models)
        url = self.url("/models", "")
        try:
            response = await self.client.get(url, params=self.settings.query)
        except httpx.HTTPError as err:
            raise error_from_exception(self.name, url, err, self.secrets) from None
        if response.status_code != 200:
            raise error_from_status(self.name, response.status_code, response.text, response.headers, self.secrets)
        answer = await json_object(self.name, response, self.secrets)
        listed = [str(m.get("id")) for m in answer.get("data") or [] if isinstance(m, dict) and m.get("id")]
        return sorted(set(listed) | set(self.settings.models))
