"""Anthropic's Messages API: POST ``{base_url}/messages`` with ``x-api-key`` and ``anthropic-version``.

The wire format differs from OpenAI's where it matters to an adapter:

* ``max_tokens`` is required, so it is always sent (``default_max_tokens``
  when the caller leaves it unset); system prompts are one top-level
  ``system`` field, not messages.
* Only ``user`` and ``assistant`` turns exist and they must alternate: tool
  results travel as ``tool_result`` blocks inside a user turn, and
  consecutive turns of one role are merged into one turn of several blocks.
* Tool calls are ``tool_use`` content blocks whose ``input`` is a JSON
  object, not a JSON string; the domain keeps the JSON text, so it is
  parsed on the way out and serialized on the way back.
* Reasoning is "extended thinking": a token budget, not an effort level.

Streams are SSE with an ``event:`` line per event: ``message_start``, per
content block ``content_block_start``/``_delta``/``_stop`` (keyed by the
block's position among all blocks; tool calls are renumbered among tool
blocks only, which is what the domain's ``index`` means), ``message_delta``
(stop reason, cumulative output tokens) and ``message_stop``.  ``ping`` may
come anywhere and an ``error`` event (``overloaded_error``, the HTTP 529
case) may follow a 200, so only ``message_stop`` proves a complete answer.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent

from ratatoskr_client.errors import InvalidArgument
from ratatoskr_client.types import (
    ChatEvent,
    ChatOptions,
    ChatResult,
    ContentDelta,
    Done,
    Message,
    ReasoningDelta,
    ReasoningOptions,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
    UsageEvent,
)
from ratatoskr_server.providers.base import HttpProvider
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.providers.continuation import PREFILL, prefilled, prompted
from ratatoskr_server.providers.errors import error_from_exception, error_from_status, error_in_stream, json_object
from ratatoskr_server.providers.streaming import relay

ANTHROPIC_VERSION = "2023-06-01"
#: The API rejects smaller thinking budgets.
MIN_THINKING_BUDGET = 1024
#: Thinking budgets for effort levels: roughly OpenAI's low/medium/high reasoning spend.
EFFORT_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}
#: Anthropic stop reasons in the domain's (OpenAI's) vocabulary; others pass through unchanged.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_MODEL_PAGES = 50  # list_models stops paginating here: a runaway cursor must not loop forever


def finish_reason(stop_reason: str | None) -> str:
    return FINISH_REASONS.get(stop_reason or "end_turn", stop_reason or "stop")


def usage_from_anthropic(data: dict[str, Any] | None) -> Usage | None:
    """Anthropic's ``input_tokens`` excludes prompt-cache reads and writes; the domain's prompt count includes them.

    So ``prompt_tokens`` is input + cache reads + cache writes and ``cached_tokens``
    (the reads) is a part of it, as with OpenAI, and cost accounting needs no
    per-provider case.
    """
    if not data:
        return None
    fresh = int(data.get("input_tokens") or 0)
    read = int(data.get("cache_read_input_tokens") or 0)
    written = int(data.get("cache_creation_input_tokens") or 0)
    prompt, completion = fresh + read + written, int(data.get("output_tokens") or 0)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion, cached_tokens=read
    )


def _tool_input(provider: str, call: ToolCall) -> dict[str, Any]:
    """The ``input`` object of a ``tool_use`` block from the JSON text the domain carries."""
    try:
        value: Any = json.loads(call.arguments) if call.arguments.strip() else {}
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{provider}: the arguments of tool call '{call.id}' ({call.name}) are not a JSON object")
    return value


def messages_to_anthropic(provider: str, messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
    """(system, messages): system turns joined, tool results as user blocks, same-role neighbours merged.

    Empty turns are dropped rather than sent: the API rejects empty text
    blocks, and an assistant turn that said nothing carries no information.
    """
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role in ("system", "developer"):
            if m.content:
                system.append(m.content)
            continue
        blocks: list[dict[str, Any]] = []
        if m.role == "tool":
            role = "user"
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.tool_call_id}
            if m.content:
                result["content"] = m.content
            blocks.append(result)
        else:
            role = "assistant" if m.role == "assistant" else "user"
            if m.content:
                blocks.append({"type": "text", "text": m.content})
            for call in m.tool_calls:
                blocks.append(
                    {"type": "tool_use", "id": call.id, "name": call.name, "input": _tool_input(provider, call)}
                )
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return "\n\n".join(system), out


def thinking_budget(reasoning: ReasoningOptions | None) -> int | None:
    """Tokens of extended thinking asked for, or None for no thinking (no budget, no effort, or effort "none")."""
    if reasoning is None:
        return None
    if reasoning.max_tokens:
        return max(reasoning.max_tokens, MIN_THINKING_BUDGET)
    effort = reasoning.effort.lower()
    if not effort or effort == "none":
        return None
    return EFFORT_BUDGETS.get(effort, EFFORT_BUDGETS["medium"])


def options_to_anthropic(o: ChatOptions, default_max_tokens: int) -> dict[str, Any]:
    """The request fields for ``o``; ``max_tokens`` always, other unset options left out.

    Thinking tokens count against ``max_tokens`` and the budget must stay below
    it: with no caller limit the default answer room is added on top of the
    budget; with one, the budget is cut to fit inside it (the caller's cap wins).
    """
    budget = thinking_budget(o.reasoning)
    if o.max_tokens is not None:
        max_tokens = o.max_tokens
        if budget is not None:
            budget = max(min(budget, max_tokens - 1), MIN_THINKING_BUDGET)
    else:
        max_tokens = default_max_tokens + (budget or 0)
    body: dict[str, Any] = {"max_tokens": max_tokens}
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(o, name)
        if value is not None:
            body[name] = value
    if o.stop:
        body["stop_sequences"] = list(o.stop)
    if o.tools:
        body["tools"] = [
            {
                "name": t.name,
                **({"description": t.description} if t.description else {}),  # optional; "" says nothing
                "input_schema": t.parameters or {"type": "object", "properties": {}},
            }
            for t in o.tools
        ]
    if o.tool_choice is not None:
        c = o.tool_choice
        if c.mode == "function":
            body["tool_choice"] = {"type": "tool", "name": c.function}
        else:
            body["tool_choice"] = {"type": {"auto": "auto", "none": "none", "required": "any"}[c.mode]}
    if budget is not None:
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    body.update(o.raw_provider_options)
    return body


@dataclass
class _Block:
    """One open content block: its type, its ordinal among tool blocks, whether arguments came for it."""

    type: str
    tool_index: int = -1
    has_arguments: bool = False


class _StreamState:
    """Turns stream events into domain events: blocks by index, tool ordinals, usage and stop reason."""

    def __init__(self, exclude_reasoning: bool) -> None:
        self.exclude_reasoning = exclude_reasoning
        self.blocks: dict[int, _Block] = {}
        self.tool_count = 0
        self.stop_reason: str | None = None
        self.usage: dict[str, Any] = {}
        self.finished = False

    def events(self, kind: str, data: dict[str, Any]) -> list[ChatEvent]:
        out: list[ChatEvent] = []
        if kind == "message_start":
            self.usage.update((data.get("message") or {}).get("usage") or {})
        elif kind == "content_block_start":
            raw = data.get("content_block") or {}
            block = _Block(str(raw.get("type") or ""))
            if block.type == "tool_use":
                block.tool_index, self.tool_count = self.tool_count, self.tool_count + 1
                out.append(ToolCallStart(index=block.tool_index, id=raw.get("id") or "", name=raw.get("name") or ""))
                if raw.get("input"):  # streams start with {}; anything else is arguments already known
                    block.has_arguments = True
                    out.append(ToolCallDelta(index=block.tool_index, arguments=json.dumps(raw["input"])))
            elif block.type == "text" and raw.get("text"):
                out.append(ContentDelta(raw["text"]))
            elif block.type == "thinking" and raw.get("thinking") and not self.exclude_reasoning:
                out.append(ReasoningDelta(raw["thinking"]))
            self.blocks[int(data.get("index", 0))] = block
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta" and delta.get("text"):
                out.append(ContentDelta(delta["text"]))
            elif dtype == "thinking_delta" and delta.get("thinking") and not self.exclude_reasoning:
                out.append(ReasoningDelta(delta["thinking"]))
            elif dtype == "input_json_delta" and delta.get("partial_json"):
                open_block = self.blocks.get(int(data.get("index", 0)))
                if open_block is not None and open_block.type == "tool_use":
                    open_block.has_arguments = True
                    out.append(ToolCallDelta(index=open_block.tool_index, arguments=delta["partial_json"]))
            # signature_delta, citations_delta and future delta types carry nothing the domain has
        elif kind == "content_block_stop":
            open_block = self.blocks.pop(int(data.get("index", 0)), None)
            if open_block is not None and open_block.type == "tool_use":
                if not open_block.has_arguments:  # a call without parameters: "{}", as the unary answer has it
                    out.append(ToolCallDelta(index=open_block.tool_index, arguments="{}"))
                out.append(ToolCallEnd(open_block.tool_index))
        elif kind == "message_delta":
            stop = (data.get("delta") or {}).get("stop_reason")
            if stop:
                self.stop_reason = str(stop)
            self.usage.update(data.get("usage") or {})  # cumulative counts: the latest value wins
        elif kind == "message_stop":
            self.finished = True
        return out

    def closing(self) -> list[ChatEvent]:
        out: list[ChatEvent] = []
        usage = usage_from_anthropic(self.usage)
        if usage is not None:
            out.append(UsageEvent(usage))
        out.append(Done(finish_reason=finish_reason(self.stop_reason)))
        return out


class _AnthropicWire:
    """Messages SSE: typed events (``content_block_delta`` …), ``error`` events, ``message_stop`` last."""

    def __init__(self, provider: str, secrets: list[str], exclude: bool) -> None:
        self.provider, self.secrets = provider, secrets
        self.state = _StreamState(exclude)

    def records(self, response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
        return EventSource(response).aiter_sse()

    def events(self, sse: ServerSentEvent) -> Iterable[ChatEvent]:
        if not sse.data.strip():
            return ()
        data: Any = json.loads(sse.data)
        if not isinstance(data, dict):
            return ()
        kind = str(data.get("type") or sse.event)
        if kind == "error":
            error = data.get("error")
            message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
            code = str(error.get("type") or "") if isinstance(error, dict) else ""
            raise error_in_stream(self.provider, message, code, self.secrets)
        return self.state.events(kind, data)

    @property
    def ended(self) -> bool:
        return self.state.finished

    @property
    def complete(self) -> bool:
        return self.state.finished

    def closing(self) -> Iterable[ChatEvent]:
        return self.state.closing()


class AnthropicProvider(HttpProvider):
    kind = "anthropic"
    capabilities = frozenset({Capability.CHAT})
    supported_parameters = frozenset(
        {"temperature", "max_tokens", "top_p", "top_k", "stop", "tools", "tool_choice", "reasoning"}
    )

    def default_headers(self) -> dict[str, str]:
        """``anthropic-version`` and the bare key in ``x-api-key``.

        The setting's default header is "Authorization" (OpenAI's), which
        Anthropic rejects, so it means ``x-api-key`` here; any other header
        name the user chose is respected (some gateways in front of Anthropic
        want their own).  Configured headers may override the version or add
        ``anthropic-beta``.
        """
        headers = dict(self.settings.headers)
        if not any(h.lower() == "anthropic-version" for h in headers):
            headers["anthropic-version"] = ANTHROPIC_VERSION
        key = self.settings.api_key.get_secret_value() if self.settings.api_key else ""
        if key:
            header = self.settings.api_key_header
            headers["x-api-key" if header.lower() == "authorization" else header] = key
        return headers

    def url(self, path: str) -> str:
        return self.settings.base_url.rstrip("/") + path

    def _body(self, model: str, messages: Sequence[Message], options: ChatOptions, **fields: Any) -> dict[str, Any]:
        system, turns = messages_to_anthropic(self.name, messages)
        body: dict[str, Any] = {"model": model, "messages": turns}
        if system:
            body["system"] = system
        body.update(fields)
        body.update(options_to_anthropic(options, self.settings.default_max_tokens))
        return body

    async def chat(self, model: str, messages: Sequence[Message], options: ChatOptions) -> ChatResult:
        url = self.url("/messages")
        body = self._body(model, messages, options)
        try:
            response = await self.client.post(url, json=body, params=self.settings.query)
        except httpx.HTTPError as err:
            raise error_from_exception(self.name, url, err, self.secrets) from None
        if response.status_code != 200:
            raise error_from_status(self.name, response.status_code, response.text, response.headers, self.secrets)
        data = await json_object(self.name, response, self.secrets)
        text: list[str] = []
        thinking: list[str] = []
        calls: list[ToolCall] = []
        for block in data.get("content") or []:
            btype = block.get("type")
            if btype == "text":
                text.append(block.get("text") or "")
            elif btype == "tool_use":
                arguments = json.dumps(block.get("input") or {})
                calls.append(ToolCall(id=block.get("id") or "", name=block.get("name") or "", arguments=arguments))
            elif btype == "thinking":
                thinking.append(block.get("thinking") or "")
        exclude = bool(options.reasoning and options.reasoning.exclude)
        return ChatResult(
            message=Message(role="assistant", content="".join(text), tool_calls=calls),
            finish_reason=finish_reason(data.get("stop_reason")),
            usage=usage_from_anthropic(data.get("usage")) or Usage(),
            model=data.get("model") or model,
            reasoning="" if exclude else "".join(thinking),
        )

    def _stream(self, url: str, body: dict[str, Any], exclude: bool) -> AsyncIterator[ChatEvent]:
        return relay(
            self.client,
            url,
            body,
            self.settings.query,
            _AnthropicWire(self.name, self.secrets, exclude),
            status_error=lambda status, text, headers: error_from_status(
                self.name, status, text, headers, self.secrets
            ),
            transport_error=lambda err: error_from_exception(self.name, url, err, self.secrets),
            provider=self.name,
            idle_timeout_s=self.settings.stream_idle_timeout_s,
        )

    def chat_stream(self, model: str, messages: Sequence[Message], options: ChatOptions) -> AsyncIterator[ChatEvent]:
        # The body is built here, not in the generator, so a request that cannot be sent fails at the call.
        body = self._body(model, messages, options, stream=True)
        return self._stream(self.url("/messages"), body, bool(options.reasoning and options.reasoning.exclude))

    def continuation_mode(self, model: str) -> str:
        """A trailing assistant message is a prefill on the Messages API (models that refuse it are
        declared "prompt" in failover.continuation)."""
        return PREFILL

    def continue_stream(
        self, model: str, messages: Sequence[Message], partial: str, mode: str, options: ChatOptions
    ) -> AsyncIterator[ChatEvent]:
        """Prefill: the API refuses a final assistant turn that ends in whitespace, so the trailing
        whitespace stays out of it (the model writes it again, and the seam drops the repeat)."""
        turns = prefilled(messages, partial.rstrip()) if mode == PREFILL else prompted(messages, partial)
        body = self._body(model, turns, options, stream=True)
        return self._stream(self.url("/messages"), body, bool(options.reasoning and options.reasoning.exclude))

    async def list_models(self) -> list[str]:
        """Every page of ``GET /models``, with the configured models; only the configured ones on 404.

        A 404 means a gateway or proxy in front of Anthropic without the listing endpoint.
        """
        url = self.url("/models")
        listed: set[str] = set()
        params: dict[str, str] = {**self.settings.query, "limit": "1000"}
        for _ in range(_MODEL_PAGES):
            try:
                response = await self.client.get(url, params=params)
            except httpx.HTTPError as err:
                raise error_from_exception(self.name, url, err, self.secrets) from None
            if response.status_code == 404:
                return list(self.settings.models)
            if response.status_code != 200:
                raise error_from_status(self.name, response.status_code, response.text, response.headers, self.secrets)
            page = await json_object(self.name, response, self.secrets)
            listed.update(str(m["id"]) for m in page.get("data") or [] if m.get("id"))
            if not page.get("has_more") or not page.get("last_id"):
                break
            params["after_id"] = str(page["last_id"])
        return sorted(listed | set(self.settings.models))
