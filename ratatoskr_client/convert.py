"""Protobuf ⇄ domain conversion: the only code, with the RPC edge, that touches protobuf.

Both directions live here so the daemon's servicers and the client's
transport can never drift apart on what a field means.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from google.protobuf import json_format, struct_pb2

from ratatoskr_client._proto.ratatoskr.v1 import admin_pb2, gateway_pb2, types_pb2
from ratatoskr_client.errors import InvalidArgument
from ratatoskr_client.types import (
    NUMERIC_PARAMETERS,
    BudgetStatus,
    ChatEvent,
    ChatOptions,
    ChatResult,
    ClassifyResult,
    ContentDelta,
    CountTokensResult,
    Done,
    EmbedResult,
    Failover,
    GenerateResult,
    LabelScore,
    LoadedModel,
    Message,
    ModelInfo,
    ModelMetadata,
    NliPrediction,
    NliResult,
    Notes,
    ParameterAvailability,
    Pricing,
    ReasoningDelta,
    ReasoningOptions,
    ReloadResult,
    RenderedPrompt,
    ResponseFormat,
    ServerStatus,
    SwapResult,
    Task,
    Timing,
    Token,
    TokenizeResult,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolChoice,
    ToolDefinition,
    Truncation,
    Usage,
    UsageEvent,
)

_TASK_TO_PB: dict[Task, int] = {
    Task.CHAT: types_pb2.TASK_CHAT,
    Task.GENERATE: types_pb2.TASK_GENERATE,
    Task.EMBED: types_pb2.TASK_EMBED,
    Task.NLI: types_pb2.TASK_NLI,
    Task.CLASSIFY: types_pb2.TASK_CLASSIFY,
}
_TASK_FROM_PB: dict[int, Task] = {v: k for k, v in _TASK_TO_PB.items()}


def task_to_pb(task: Task | None) -> types_pb2.Task.ValueType:
    return types_pb2.Task.ValueType(_TASK_TO_PB.get(task, types_pb2.TASK_UNSPECIFIED) if task else 0)


def task_from_pb(value: int, *, strict: bool = True) -> Task | None:
    """None for TASK_UNSPECIFIED.  An unknown value in a request is the caller's mistake (strict); in
    an answer it is a newer daemon's task, which this version skips."""
    if value == types_pb2.TASK_UNSPECIFIED:
        return None
    task = _TASK_FROM_PB.get(value)
    if task is None and strict:
        raise InvalidArgument(f"unknown task {value}; known: {', '.join(t.value for t in _TASK_TO_PB)}")
    return task


def timing_to_pb(t: Timing) -> types_pb2.Timing:
    return types_pb2.Timing(
        queue_ms=t.queue_ms,
        tokenization_ms=t.tokenization_ms,
        inference_ms=t.inference_ms,
        total_ms=t.total_ms,
        input_tokens=t.input_tokens,
        output_tokens=t.output_tokens,
    )


def timing_from_pb(t: types_pb2.Timing) -> Timing:
    return Timing(
        queue_ms=t.queue_ms,
        tokenization_ms=t.tokenization_ms,
        inference_ms=t.inference_ms,
        total_ms=t.total_ms,
        input_tokens=t.input_tokens,
        output_tokens=t.output_tokens,
    )


_NO_NOTES = Notes()


def notes_to_pb(n: Notes) -> types_pb2.Notes:
    if n == _NO_NOTES:  # most answers: nothing to build field by field
        return types_pb2.Notes()
    pb = types_pb2.Notes(
        dropped_parameters=n.dropped_parameters,
        budget_warning=n.budget_warning,
        cache_hits=n.cache_hits,
        retries=n.retries,
        failed_over=n.failed_over,
        failovers=[failover_to_pb(f) for f in n.failovers],
        spilled_from=n.spilled_from,
    )
    t = n.truncation
    if t is not None:
        pb.truncation.CopyFrom(
            types_pb2.Truncation(
                strategy=t.strategy,
                dropped_messages=t.dropped_messages,
                prompt_tokens_before=t.prompt_tokens_before,
                prompt_tokens_after=t.prompt_tokens_after,
                window=t.window,
                reserve=t.reserve,
                estimated=t.estimated,
            )
        )
    return pb


def notes_from_pb(n: types_pb2.Notes) -> Notes:
    truncation = None
    if n.HasField("truncation"):
        t = n.truncation
        truncation = Truncation(
            strategy=t.strategy,
            dropped_messages=list(t.dropped_messages),
            prompt_tokens_before=t.prompt_tokens_before,
            prompt_tokens_after=t.prompt_tokens_after,
            window=t.window,
            reserve=t.reserve,
            estimated=t.estimated,
        )
    return Notes(
        dropped_parameters=list(n.dropped_parameters),
        truncation=truncation,
        budget_warning=n.budget_warning,
        cache_hits=n.cache_hits,
        retries=n.retries,
        failed_over=list(n.failed_over),
        failovers=[failover_from_pb(f) for f in n.failovers],
        spilled_from=n.spilled_from,
    )


def failover_to_pb(f: Failover) -> types_pb2.Failover:
    return types_pb2.Failover(
        from_candidate=f.from_candidate, to_candidate=f.to_candidate, at_char=f.at_char, reason=f.reason
    )


def failover_from_pb(pb: types_pb2.Failover) -> Failover:
    return Failover(
        from_candidate=pb.from_candidate, to_candidate=pb.to_candidate, at_char=pb.at_char, reason=pb.reason
    )


def usage_to_pb(u: Usage) -> types_pb2.Usage:
    return types_pb2.Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
        cached_tokens=u.cached_tokens,
        reasoning_tokens=u.reasoning_tokens,
        cost_usd=u.cost_usd,
    )


def usage_from_pb(u: types_pb2.Usage) -> Usage:
    return Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
        cached_tokens=u.cached_tokens,
        reasoning_tokens=u.reasoning_tokens,
        cost_usd=u.cost_usd,
    )


def embed_request_to_pb(inputs: Sequence[str], model: str, truncate: bool) -> gateway_pb2.EmbedRequest:
    return gateway_pb2.EmbedRequest(model=model, inputs=list(inputs), truncate=truncate)


def embed_request_from_pb(req: gateway_pb2.EmbedRequest) -> tuple[list[str], str, bool]:
    """(inputs, model, truncate); truncate defaults to True when the caller left it unset."""
    truncate = req.truncate if req.HasField("truncate") else True
    return list(req.inputs), req.model, truncate


def embed_result_to_pb(r: EmbedResult) -> gateway_pb2.EmbedResponse:
    return gateway_pb2.EmbedResponse(
        embeddings=[
            gateway_pb2.Embedding(values=v, tokens=n, truncated=cut)
            for v, n, cut in zip(r.vectors, r.tokens, r.truncated, strict=True)
        ],
        dimension=r.dimension,
        model=r.model,
        normalized=r.normalized,
        usage=usage_to_pb(r.usage),
        timing=timing_to_pb(r.timing),
        notes=notes_to_pb(r.notes),
    )


def embed_result_from_pb(resp: gateway_pb2.EmbedResponse) -> EmbedResult:
    return EmbedResult(
        vectors=[e.values[:] for e in resp.embeddings],  # a slice copies in C, twice as fast as list()
        tokens=[e.tokens for e in resp.embeddings],
        truncated=[e.truncated for e in resp.embeddings],
        dimension=resp.dimension,
        model=resp.model,
        normalized=resp.normalized,
        usage=usage_from_pb(resp.usage),
        timing=timing_from_pb(resp.timing),
        notes=notes_from_pb(resp.notes),
    )


def loaded_model_to_pb(m: LoadedModel) -> admin_pb2.LoadedModel:
    return admin_pb2.LoadedModel(
        name=m.name,
        task=task_to_pb(m.task),
        state=m.state,
        device=m.device,
        memory_mb=m.memory_mb,
        file_mb=m.file_mb,
        pinned=m.pinned,
        requests=m.requests,
        idle_s=m.idle_s,
        in_flight=m.in_flight,
        revision=m.revision,
        verification=m.verification,
        signature=m.signature,
        encrypted=m.encrypted,
        queued=m.queued,
        mean_batch_size=m.mean_batch_size,
        largest_batch=m.largest_batch,
    )


def loaded_model_from_pb(m: admin_pb2.LoadedModel) -> LoadedModel:
    return LoadedModel(
        name=m.name,
        task=task_from_pb(m.task, strict=False),
        state=m.state,
        device=m.device,
        memory_mb=m.memory_mb,
        file_mb=m.file_mb,
        pinned=m.pinned,
        requests=m.requests,
        idle_s=m.idle_s,
        in_flight=m.in_flight,
        revision=m.revision,
        verification=m.verification,
        signature=m.signature,
        encrypted=m.encrypted,
        queued=m.queued,
        mean_batch_size=m.mean_batch_size,
        largest_batch=m.largest_batch,
    )


def status_to_pb(s: ServerStatus) -> admin_pb2.StatusResponse:
    return admin_pb2.StatusResponse(
        version=s.version,
        pid=s.pid,
        uptime_s=s.uptime_s,
        listen=s.listen,
        in_flight=s.in_flight,
        max_in_flight=s.max_in_flight,
        state=s.state,
        models=[loaded_model_to_pb(m) for m in s.models],
        config_path=s.config_path,
        breakers=s.breakers,
        config_generation=s.config_generation,
        config_sha256=s.config_sha256,
        bulkhead_in_flight=s.bulkhead_in_flight,
        bulkhead_limits=s.bulkhead_limits,
    )


def status_from_pb(s: admin_pb2.StatusResponse) -> ServerStatus:
    return ServerStatus(
        version=s.version,
        pid=s.pid,
        uptime_s=s.uptime_s,
        listen=list(s.listen),
        in_flight=s.in_flight,
        max_in_flight=s.max_in_flight,
        state=s.state,
        models=[loaded_model_from_pb(m) for m in s.models],
        config_path=s.config_path,
        breakers=dict(s.breakers),
        config_generation=s.config_generation,
        config_sha256=s.config_sha256,
        bulkhead_in_flight=dict(s.bulkhead_in_flight),
        bulkhead_limits=dict(s.bulkhead_limits),
    )


def reload_to_pb(r: ReloadResult) -> admin_pb2.ReloadResponse:
    return admin_pb2.ReloadResponse(
        applied=r.applied,
        changed=r.changed,
        needs_restart=r.needs_restart,
        message=r.message,
        generation=r.generation,
        config_sha256=r.config_sha256,
    )


def swap_to_pb(r: SwapResult) -> admin_pb2.SwapModelResponse:
    return admin_pb2.SwapModelResponse(
        model=r.model, old_revision=r.old_revision, new_revision=r.new_revision, mode=r.mode, message=r.message
    )


def swap_from_pb(r: admin_pb2.SwapModelResponse) -> SwapResult:
    return SwapResult(
        model=r.model, old_revision=r.old_revision, new_revision=r.new_revision, mode=r.mode, message=r.message
    )


def reload_from_pb(r: admin_pb2.ReloadResponse) -> ReloadResult:
    return ReloadResult(
        applied=r.applied,
        changed=list(r.changed),
        needs_restart=list(r.needs_restart),
        message=r.message,
        generation=r.generation,
        config_sha256=r.config_sha256,
    )


def _scores_to_pb(scores: Sequence[LabelScore]) -> list[gateway_pb2.LabelScore]:
    return [gateway_pb2.LabelScore(label=s.label, score=s.score) for s in scores]


def _scores_from_pb(scores: Sequence[gateway_pb2.LabelScore]) -> list[LabelScore]:
    return [LabelScore(label=s.label, score=s.score) for s in scores]


def nli_request_to_pb(pairs: Sequence[tuple[str, str]], model: str, truncate: bool) -> gateway_pb2.NliRequest:
    return gateway_pb2.NliRequest(
        model=model,
        pairs=[gateway_pb2.NliPair(premise=p, hypothesis=h) for p, h in pairs],
        truncate=truncate,
    )


def nli_request_from_pb(req: gateway_pb2.NliRequest) -> tuple[list[tuple[str, str]], str, bool]:
    truncate = req.truncate if req.HasField("truncate") else True
    return [(p.premise, p.hypothesis) for p in req.pairs], req.model, truncate


def nli_result_to_pb(r: NliResult) -> gateway_pb2.NliResponse:
    return gateway_pb2.NliResponse(
        results=[gateway_pb2.NliResult(scores=_scores_to_pb(p.scores), label=p.label) for p in r.predictions],
        model=r.model,
        usage=usage_to_pb(r.usage),
        timing=timing_to_pb(r.timing),
        notes=notes_to_pb(r.notes),
    )


def nli_result_from_pb(resp: gateway_pb2.NliResponse) -> NliResult:
    return NliResult(
        predictions=[NliPrediction(scores=_scores_from_pb(x.scores), label=x.label) for x in resp.results],
        model=resp.model,
        usage=usage_from_pb(resp.usage),
        timing=timing_from_pb(resp.timing),
        notes=notes_from_pb(resp.notes),
    )


def classify_request_to_pb(
    text: str, labels: Sequence[str], model: str, multi_label: bool, hypothesis_template: str
) -> gateway_pb2.ClassifyRequest:
    return gateway_pb2.ClassifyRequest(
        model=model,
        text=text,
        candidate_labels=list(labels),
        multi_label=multi_label,
        hypothesis_template=hypothesis_template,
    )


def classify_result_to_pb(r: ClassifyResult) -> gateway_pb2.ClassifyResponse:
    return gateway_pb2.ClassifyResponse(
        scores=_scores_to_pb(r.scores),
        model=r.model,
        strategy=r.strategy,
        usage=usage_to_pb(r.usage),
        timing=timing_to_pb(r.timing),
        notes=notes_to_pb(r.notes),
    )


def classify_result_from_pb(resp: gateway_pb2.ClassifyResponse) -> ClassifyResult:
    return ClassifyResult(
        scores=_scores_from_pb(resp.scores),
        model=resp.model,
        strategy=resp.strategy,
        usage=usage_from_pb(resp.usage),
        timing=timing_from_pb(resp.timing),
        notes=notes_from_pb(resp.notes),
    )


def tokenize_result_to_pb(r: TokenizeResult) -> gateway_pb2.TokenizeResponse:
    return gateway_pb2.TokenizeResponse(
        tokens=[gateway_pb2.Token(id=t.id, text=t.text, start=t.start, end=t.end) for t in r.tokens],
        model=r.model,
        timing=timing_to_pb(r.timing),
    )


def tokenize_result_from_pb(resp: gateway_pb2.TokenizeResponse) -> TokenizeResult:
    return TokenizeResult(
        tokens=[Token(id=t.id, text=t.text, start=t.start, end=t.end) for t in resp.tokens],
        model=resp.model,
        timing=timing_from_pb(resp.timing),
    )


def count_tokens_result_to_pb(r: CountTokensResult) -> gateway_pb2.CountTokensResponse:
    return gateway_pb2.CountTokensResponse(
        counts=r.counts, total=r.total, model=r.model, timing=timing_to_pb(r.timing), estimated=r.estimated
    )


def count_tokens_result_from_pb(resp: gateway_pb2.CountTokensResponse) -> CountTokensResult:
    return CountTokensResult(
        counts=list(resp.counts),
        total=resp.total,
        model=resp.model,
        timing=timing_from_pb(resp.timing),
        estimated=resp.estimated,
    )


# -- chat --------------------------------------------------------------------------------------------


def _whole_numbers(value: Any) -> Any:
    """Struct carries every number as a double; JSON schemas mean integers (``maxItems: 3``, not 3.0)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def _struct_to_dict(s: struct_pb2.Struct) -> dict[str, Any]:
    data: dict[str, Any] = _whole_numbers(json_format.MessageToDict(s))
    return data


def _dict_to_struct(d: dict[str, Any] | None) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    if d:
        out.update(d)
    return out


def message_to_pb(m: Message) -> types_pb2.Message:
    return types_pb2.Message(
        role=m.role,
        content=m.content,
        tool_calls=[types_pb2.ToolCall(id=t.id, type=t.type, name=t.name, arguments=t.arguments) for t in m.tool_calls],
        name=m.name,
        tool_call_id=m.tool_call_id,
    )


def message_from_pb(m: types_pb2.Message) -> Message:
    return Message(
        role=m.role,
        content=m.content,
        tool_calls=[
            ToolCall(id=t.id, name=t.name, arguments=t.arguments, type=t.type or "function") for t in m.tool_calls
        ],
        name=m.name,
        tool_call_id=m.tool_call_id,
    )


_FORMATS: dict[str, types_pb2.ResponseFormat.Type.ValueType] = {
    "text": types_pb2.ResponseFormat.TYPE_TEXT,
    "json_object": types_pb2.ResponseFormat.TYPE_JSON_OBJECT,
    "json_schema": types_pb2.ResponseFormat.TYPE_JSON_SCHEMA,
}
_FORMAT_NAMES = {v: k for k, v in _FORMATS.items()}


def _opt(msg: Any, name: str) -> Any:
    return getattr(msg, name) if msg.HasField(name) else None


def chat_options_to_pb(o: ChatOptions) -> types_pb2.ChatOptions:
    pb = types_pb2.ChatOptions(
        model=o.model,
        stop=o.stop,
        tools=[
            types_pb2.ToolDefinition(
                name=t.name, description=t.description, parameters=_dict_to_struct(t.parameters), strict=t.strict
            )
            for t in o.tools
        ],
        raw_provider_options_json=json.dumps(o.raw_provider_options) if o.raw_provider_options else "",
        context_strategy=o.context_strategy,
    )
    if o.stream_failover is not None:
        pb.stream_failover = o.stream_failover
    for name in NUMERIC_PARAMETERS:
        value = getattr(o, name)
        if value is not None:
            setattr(pb, name, value)
    if o.parallel_tool_calls is not None:
        pb.parallel_tool_calls = o.parallel_tool_calls
    if o.tool_choice is not None:
        c = o.tool_choice
        if c.mode == "function":
            pb.tool_choice.function = c.function
        else:
            setattr(pb.tool_choice, c.mode, True)
    if o.response_format is not None:
        f = o.response_format
        pb.response_format.CopyFrom(
            types_pb2.ResponseFormat(
                type=_FORMATS[f.type],
                schema_name=f.schema_name,
                json_schema=None if f.json_schema is None else _dict_to_struct(f.json_schema),  # None stays None
                strict=f.strict,
            )
        )
    if o.reasoning is not None:
        r = o.reasoning
        pb.reasoning.CopyFrom(types_pb2.ReasoningOptions(effort=r.effort, exclude=r.exclude))
        if r.max_tokens is not None:
            pb.reasoning.max_tokens = r.max_tokens
    return pb


#: ChatOptions fields whose wire value is the domain value as it is (scalars; "optional" ones are
#: listed only when set, as None-when-unset wants).
_PLAIN_OPTIONS = frozenset(
    {
        "model",
        "temperature",
        "max_tokens",
        "top_p",
        "top_k",
        "frequency_penalty",
        "presence_penalty",
        "seed",
        "parallel_tool_calls",
        "context_strategy",
        "stream_failover",
    }
)


def chat_options_from_pb(pb: types_pb2.ChatOptions) -> ChatOptions:
    given = pb.ListFields()  # only what the caller set, in one call
    if all(descriptor.name in _PLAIN_OPTIONS for descriptor, _ in given):  # the usual request: nothing to convert
        return ChatOptions(**{descriptor.name: value for descriptor, value in given})
    choice: ToolChoice | None = None
    which = pb.tool_choice.WhichOneof("choice") if pb.HasField("tool_choice") else None
    if which == "function":
        choice = ToolChoice("function", pb.tool_choice.function)
    elif which in ("auto", "none", "required"):
        choice = ToolChoice(which)
    fmt: ResponseFormat | None = None
    if pb.HasField("response_format") and pb.response_format.type:
        f = pb.response_format
        if f.type not in _FORMAT_NAMES:
            raise InvalidArgument(f"unknown response_format type {f.type}; known: {', '.join(_FORMATS)}")
        fmt = ResponseFormat(
            type=_FORMAT_NAMES[f.type],  # type: ignore[arg-type]
            schema_name=f.schema_name,
            json_schema=_struct_to_dict(f.json_schema) if f.HasField("json_schema") else None,
            strict=f.strict,
        )
    reasoning: ReasoningOptions | None = None
    if pb.HasField("reasoning"):
        r = pb.reasoning
        reasoning = ReasoningOptions(effort=r.effort, max_tokens=_opt(r, "max_tokens"), exclude=r.exclude)
    try:
        raw = json.loads(pb.raw_provider_options_json) if pb.raw_provider_options_json else {}
    except json.JSONDecodeError as err:
        raise InvalidArgument(f"raw_provider_options_json is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise InvalidArgument("raw_provider_options_json must be a JSON object")
    return ChatOptions(
        model=pb.model,
        temperature=_opt(pb, "temperature"),
        max_tokens=_opt(pb, "max_tokens"),
        top_p=_opt(pb, "top_p"),
        top_k=_opt(pb, "top_k"),
        stop=list(pb.stop),
        frequency_penalty=_opt(pb, "frequency_penalty"),
        presence_penalty=_opt(pb, "presence_penalty"),
        seed=_opt(pb, "seed"),
        tools=[
            ToolDefinition(
                name=t.name,
                description=t.description,
                parameters=_struct_to_dict(t.parameters) if t.HasField("parameters") else {},
                strict=t.strict,
            )
            for t in pb.tools
        ],
        tool_choice=choice,
        response_format=fmt,
        reasoning=reasoning,
        parallel_tool_calls=_opt(pb, "parallel_tool_calls"),
        context_strategy=pb.context_strategy,
        stream_failover=_opt(pb, "stream_failover"),
        raw_provider_options=raw,
    )


def chat_event_to_pb(e: ChatEvent) -> types_pb2.ChatEvent:
    E = types_pb2.ChatEvent  # noqa: N806 - reads as the message it builds
    if isinstance(e, ContentDelta):
        return E(content=E.ContentDelta(text=e.text))
    if isinstance(e, ReasoningDelta):
        return E(reasoning=E.ReasoningDelta(text=e.text))
    if isinstance(e, ToolCallStart):
        return E(tool_call_start=E.ToolCallStart(index=e.index, id=e.id, name=e.name))
    if isinstance(e, ToolCallDelta):
        return E(tool_call_delta=E.ToolCallDelta(index=e.index, arguments=e.arguments))
    if isinstance(e, ToolCallEnd):
        return E(tool_call_end=E.ToolCallEnd(index=e.index))
    if isinstance(e, UsageEvent):
        return E(usage=usage_to_pb(e.usage))
    if isinstance(e, Failover):
        return E(failover=failover_to_pb(e))
    return E(
        done=E.Done(
            finish_reason=e.finish_reason,
            timing=timing_to_pb(e.timing),
            provider=e.provider,
            model=e.model,
            notes=notes_to_pb(e.notes),
        )
    )


def chat_event_from_pb(pb: types_pb2.ChatEvent) -> ChatEvent | None:
    """The event, or None for a kind this version does not know (a newer daemon's): skip it, never end."""
    which = pb.WhichOneof("event")
    if which == "content":
        return ContentDelta(pb.content.text)
    if which == "reasoning":
        return ReasoningDelta(pb.reasoning.text)
    if which == "tool_call_start":
        s = pb.tool_call_start
        return ToolCallStart(index=s.index, id=s.id, name=s.name)
    if which == "tool_call_delta":
        return ToolCallDelta(index=pb.tool_call_delta.index, arguments=pb.tool_call_delta.arguments)
    if which == "tool_call_end":
        return ToolCallEnd(index=pb.tool_call_end.index)
    if which == "usage":
        return UsageEvent(usage_from_pb(pb.usage))
    if which == "failover":
        return failover_from_pb(pb.failover)
    if which != "done":
        return None
    d = pb.done
    return Done(
        finish_reason=d.finish_reason,
        timing=timing_from_pb(d.timing),
        provider=d.provider,
        model=d.model,
        notes=notes_from_pb(d.notes),
    )


def chat_result_to_pb(r: ChatResult) -> gateway_pb2.ChatResponse:
    return gateway_pb2.ChatResponse(
        message=message_to_pb(r.message),
        finish_reason=r.finish_reason,
        usage=usage_to_pb(r.usage),
        timing=timing_to_pb(r.timing),
        notes=notes_to_pb(r.notes),
        provider=r.provider,
        model=r.model,
        reasoning=r.reasoning,
    )


def chat_result_from_pb(pb: gateway_pb2.ChatResponse) -> ChatResult:
    return ChatResult(
        message=message_from_pb(pb.message),
        finish_reason=pb.finish_reason,
        usage=usage_from_pb(pb.usage),
        timing=timing_from_pb(pb.timing),
        notes=notes_from_pb(pb.notes),
        provider=pb.provider,
        model=pb.model,
        reasoning=pb.reasoning,
    )


def generate_result_to_pb(r: GenerateResult) -> gateway_pb2.GenerateResponse:
    return gateway_pb2.GenerateResponse(
        text=r.text,
        finish_reason=r.finish_reason,
        usage=usage_to_pb(r.usage),
        timing=timing_to_pb(r.timing),
        notes=notes_to_pb(r.notes),
        provider=r.provider,
        model=r.model,
    )


def generate_result_from_pb(pb: gateway_pb2.GenerateResponse) -> GenerateResult:
    return GenerateResult(
        text=pb.text,
        finish_reason=pb.finish_reason,
        usage=usage_from_pb(pb.usage),
        timing=timing_from_pb(pb.timing),
        notes=notes_from_pb(pb.notes),
        provider=pb.provider,
        model=pb.model,
    )


# -- models ------------------------------------------------------------------------------------------


def model_metadata_to_pb(m: ModelMetadata) -> types_pb2.ModelMetadata:
    info = m.info
    return types_pb2.ModelMetadata(
        info=types_pb2.ModelInfo(
            id=info.id,
            provider=info.provider,
            tasks=[task_to_pb(t) for t in info.tasks],
            local=info.local,
            description=info.description,
            aliases=info.aliases,
            catalogue_only=not info.routable,
            revision=info.revision,
            verification=info.verification,
            signature=info.signature,
            encrypted=info.encrypted,
            breaker=info.breaker,
        ),
        context_window=m.context_window,
        max_output_tokens=m.max_output_tokens,
        embedding_dimension=m.embedding_dimension,
        max_sequence_length=m.max_sequence_length,
        labels=m.labels,
        source=m.source,
        parameters={name: _availability_to_pb(a) for name, a in m.parameters.items()},
        pricing=types_pb2.Pricing(
            input_per_million=m.pricing.input_per_million,
            output_per_million=m.pricing.output_per_million,
            cached_input_per_million=m.pricing.cached_input_per_million,
        )
        if m.pricing
        else None,
        tokenizer_family=m.tokenizer_family,
        signed_by=m.signed_by,
        signature_algorithm=m.signature_algorithm,
    )


def model_metadata_from_pb(pb: types_pb2.ModelMetadata) -> ModelMetadata:
    info = pb.info
    return ModelMetadata(
        info=ModelInfo(
            id=info.id,
            provider=info.provider,
            tasks=[t for t in (task_from_pb(x, strict=False) for x in info.tasks) if t is not None],
            local=info.local,
            description=info.description,
            aliases=list(info.aliases),
            routable=not info.catalogue_only,
            revision=info.revision,
            verification=info.verification,
            signature=info.signature,
            encrypted=info.encrypted,
            breaker=info.breaker,
        ),
        context_window=pb.context_window,
        max_output_tokens=pb.max_output_tokens,
        embedding_dimension=pb.embedding_dimension,
        max_sequence_length=pb.max_sequence_length,
        labels=list(pb.labels),
        source=pb.source,
        parameters={name: _availability_from_pb(a) for name, a in pb.parameters.items()},
        pricing=Pricing(
            input_per_million=pb.pricing.input_per_million,
            output_per_million=pb.pricing.output_per_million,
            cached_input_per_million=pb.pricing.cached_input_per_million,
        )
        if pb.HasField("pricing")
        else None,
        tokenizer_family=pb.tokenizer_family,
        signed_by=pb.signed_by,
        signature_algorithm=pb.signature_algorithm,
    )


def _availability_to_pb(a: ParameterAvailability) -> types_pb2.ParameterAvailability:
    pb = types_pb2.ParameterAvailability
    if a.availability == "mutable":
        mutable = pb.Mutable()
        for name in ("min", "max", "default"):
            value = getattr(a, name)
            if value is not None:
                setattr(mutable, name, value)
        return pb(mutable=mutable)
    if a.availability == "read_only":
        return pb(read_only=pb.ReadOnly(value=a.value))
    if a.availability == "opaque":
        return pb(opaque=pb.Opaque())
    return pb(unsupported=pb.Unsupported())


def _availability_from_pb(pb: types_pb2.ParameterAvailability) -> ParameterAvailability:
    which = pb.WhichOneof("availability")
    if which == "mutable":
        m = pb.mutable
        return ParameterAvailability("mutable", _opt(m, "min"), _opt(m, "max"), _opt(m, "default"))
    if which == "read_only":
        return ParameterAvailability("read_only", value=pb.read_only.value)
    if which == "opaque":
        return ParameterAvailability("opaque")
    return ParameterAvailability("unsupported")


def rendered_prompt_to_pb(r: RenderedPrompt) -> gateway_pb2.RenderChatTemplateResponse:
    return gateway_pb2.RenderChatTemplateResponse(
        text=r.text,
        tokens=r.tokens,
        template=r.template,
        timing=timing_to_pb(r.timing),
        tokens_estimated=r.tokens_estimated,
    )


def rendered_prompt_from_pb(pb: gateway_pb2.RenderChatTemplateResponse) -> RenderedPrompt:
    return RenderedPrompt(
        text=pb.text,
        tokens=pb.tokens,
        template=pb.template,
        tokens_estimated=pb.tokens_estimated,
        timing=timing_from_pb(pb.timing),
    )


def budget_status_to_pb(b: BudgetStatus) -> admin_pb2.BudgetScope:
    return admin_pb2.BudgetScope(
        scope=b.scope,
        window=b.window,
        limit_usd=float(b.limit_usd),
        spent_usd=float(b.spent_usd),
        reserved_usd=float(b.reserved_usd),
        limit=f"{b.limit_usd:f}",
        spent=f"{b.spent_usd:f}",
        reserved=f"{b.reserved_usd:f}",
        window_ends_at=b.window_ends_at,
    )


def _exact(text: str, approximate: float) -> Decimal:
    """The exact decimal string when the daemon sent one, else the display double (an older daemon)."""
    try:
        return Decimal(text) if text else Decimal(str(approximate))
    except InvalidOperation:
        return Decimal(str(approximate))


def budget_status_from_pb(b: admin_pb2.BudgetScope) -> BudgetStatus:
    return BudgetStatus(
        scope=b.scope,
        window=b.window,
        limit_usd=_exact(b.limit, b.limit_usd),
        spent_usd=_exact(b.spent, b.spent_usd),
        reserved_usd=_exact(b.reserved, b.reserved_usd),
        window_ends_at=b.window_ends_at,
    )
