"""Protobuf ⇄ domain conversion: the only code, with the RPC edge, that touches protobuf.

Both directions live here so the daemon's servicers and the client's
transport can never drift apart on what a field means.
"""

from __future__ import annotations

from collections.abc import Sequence

from ratatoskr_client._proto.ratatoskr.v1 import admin_pb2, gateway_pb2, types_pb2
from ratatoskr_client.types import (
    ClassifyResult,
    CountTokensResult,
    EmbedResult,
    LabelScore,
    LoadedModel,
    NliPrediction,
    NliResult,
    ReloadResult,
    ServerStatus,
    Task,
    Timing,
    Token,
    TokenizeResult,
    Usage,
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


def task_from_pb(value: int) -> Task | None:
    return _TASK_FROM_PB.get(value)


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
    )


def embed_result_from_pb(resp: gateway_pb2.EmbedResponse) -> EmbedResult:
    return EmbedResult(
        vectors=[list(e.values) for e in resp.embeddings],
        tokens=[e.tokens for e in resp.embeddings],
        truncated=[e.truncated for e in resp.embeddings],
        dimension=resp.dimension,
        model=resp.model,
        normalized=resp.normalized,
        usage=usage_from_pb(resp.usage),
        timing=timing_from_pb(resp.timing),
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
    )


def loaded_model_from_pb(m: admin_pb2.LoadedModel) -> LoadedModel:
    return LoadedModel(
        name=m.name,
        task=task_from_pb(m.task),
        state=m.state,
        device=m.device,
        memory_mb=m.memory_mb,
        file_mb=m.file_mb,
        pinned=m.pinned,
        requests=m.requests,
        idle_s=m.idle_s,
        in_flight=m.in_flight,
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
    )


def reload_to_pb(r: ReloadResult) -> admin_pb2.ReloadResponse:
    return admin_pb2.ReloadResponse(
        applied=r.applied, changed=r.changed, needs_restart=r.needs_restart, message=r.message
    )


def reload_from_pb(r: admin_pb2.ReloadResponse) -> ReloadResult:
    return ReloadResult(
        applied=r.applied, changed=list(r.changed), needs_restart=list(r.needs_restart), message=r.message
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
    )


def nli_result_from_pb(resp: gateway_pb2.NliResponse) -> NliResult:
    return NliResult(
        predictions=[NliPrediction(scores=_scores_from_pb(x.scores), label=x.label) for x in resp.results],
        model=resp.model,
        usage=usage_from_pb(resp.usage),
        timing=timing_from_pb(resp.timing),
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
    )


def classify_result_from_pb(resp: gateway_pb2.ClassifyResponse) -> ClassifyResult:
    return ClassifyResult(
        scores=_scores_from_pb(resp.scores),
        model=resp.model,
        strategy=resp.strategy,
        usage=usage_from_pb(resp.usage),
        timing=timing_from_pb(resp.timing),
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
    return gateway_pb2.CountTokensResponse(counts=r.counts, total=r.total, model=r.model, timing=timing_to_pb(r.timing))


def count_tokens_result_from_pb(resp: gateway_pb2.CountTokensResponse) -> CountTokensResult:
    return CountTokensResult(
        counts=list(resp.counts), total=resp.total, model=resp.model, timing=timing_from_pb(resp.timing)
    )
