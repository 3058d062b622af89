"""Hugging Face Inference Providers, through the router (``https://router.huggingface.co``).

``base_url`` is the router's root.  Three URL families hang off it:

* chat: ``{root}/v1/chat/completions``, the OpenAI-compatible endpoint that
  forwards to whichever inference provider serves the model (a ``:provider``
  suffix on the model name picks one).  Request, SSE stream, tool calls and
  usage are OpenAI's, so all of it is inherited from ``OpenAICompatProvider``.
* feature extraction: ``{root}/hf-inference/models/{model}/pipeline/feature-extraction``.
  The explicit pipeline suffix is needed because sentence-transformers models
  default to the sentence-similarity task on a bare ``models/{model}`` URL;
  Hugging Face's own clients add it for exactly this reason.
* zero-shot classification: ``{root}/hf-inference/models/{model}``: the model's
  own task, with no pipeline suffix, which is how Hugging Face's clients call it.

A ``base_url`` that already ends in ``/v1`` (as copied from the OpenAI-SDK
examples) or ``/hf-inference`` is accepted too: both are cut back to the
root-relative layout above, so one entry serves every endpoint.

Errors come as ``{"error": "..."}`` (sometimes a list of messages).  A model
that is cold answers 503 with ``estimated_time``; that becomes ``Unavailable``
whose ``retry_after_s`` is the estimate, so the retry policy above can wait
exactly as long rather than guess.  The mapping runs in an httpx response
hook, so the inherited chat and streaming paths get it as well without
re-implementing them.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from ratatoskr_client.errors import InvalidArgument, RatatoskrError, Unavailable
from ratatoskr_client.types import ChatEvent, ChatOptions, ClassifyResult, EmbedResult, GenerateResult, LabelScore
from ratatoskr_server.config import HttpSettings, ProviderSettings
from ratatoskr_server.net.egress import EgressPolicy
from ratatoskr_server.providers.base import embed_result
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.providers.errors import error_from_exception, error_from_status
from ratatoskr_server.providers.openai_compat import OpenAICompatProvider
from ratatoskr_server.redact import scrub
from ratatoskr_server.telemetry.tracing import Tracing


class HuggingFaceProvider(OpenAICompatProvider):
    kind = "huggingface"
    capabilities = frozenset({Capability.CHAT, Capability.EMBED, Capability.CLASSIFY})
    #: The router provider that runs the task pipelines (feature extraction, zero-shot).
    pipeline_provider: ClassVar[str] = "hf-inference"

    def __init__(
        self,
        name: str,
        settings: ProviderSettings,
        http: HttpSettings,
        egress: EgressPolicy | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        super().__init__(name, settings, http, egress, tracing)
        # Every response passes here, streamed or not, so the "model is loading" answer is mapped
        # once for chat, streaming chat and the pipelines alike.
        self.client.response_hooks.append(self._raise_if_loading)

    # -- URLs ---------------------------------------------------------------------------------

    @property
    def root(self) -> str:
        """The router root: ``base_url`` without a trailing ``/``, ``/v1`` or ``/hf-inference``."""
        root = self.settings.base_url.rstrip("/")
        for suffix in ("/v1", f"/{self.pipeline_provider}"):
            if root.endswith(suffix):
                root = root[: -len(suffix)]
        return root

    def url(self, path: str, model: str) -> str:
        """Chat URLs for the inherited OpenAI paths (``path`` is e.g. ``/chat/completions``)."""
        return f"{self.root}/v1{path}"

    def pipeline_url(self, model: str, task: str = "") -> str:
        """``{root}/hf-inference/models/{model}[/pipeline/{task}]``; the model's ``/`` stays a path separator."""
        url = f"{self.root}/{self.pipeline_provider}/models/{quote(model, safe='/')}"
        return f"{url}/pipeline/{task}" if task else url

    # -- errors -------------------------------------------------------------------------------

    def _loading_error(self, status: int, body: str) -> Unavailable | None:
        """A cold model's 503 ``{"error": ..., "estimated_time": s}``; None for any other answer."""
        if status != 503:
            return None
        try:
            data: Any = json.loads(body)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        estimate = data.get("estimated_time")
        if isinstance(estimate, bool) or not isinstance(estimate, int | float) or not math.isfinite(estimate):
            return None
        message = str(data.get("error") or "the model is loading")
        return Unavailable(scrub(f"{self.name}: {message}", self.secrets), retry_after_s=max(float(estimate), 0.0))

    async def _raise_if_loading(self, response: httpx.Response) -> None:
        if response.status_code == 503:
            await response.aread()  # error bodies are small; the inherited paths read the cached copy
            error = self._loading_error(response.status_code, response.text)
            if error is not None:
                raise error

    def _error(self, response: httpx.Response) -> RatatoskrError:
        """Domain error for a non-200 pipeline answer; ``{"error": [..]}`` lists are joined first."""
        body = response.text
        try:
            data: Any = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("error"), list):
            body = json.dumps({**data, "error": "; ".join(str(e) for e in data["error"])})
        return self._loading_error(response.status_code, body) or error_from_status(
            self.name, response.status_code, body, response.headers, self.secrets
        )

    async def _pipeline(self, url: str, body: dict[str, Any]) -> Any:
        """POST to a task pipeline; the parsed JSON answer (a list or a dict, depending on the task)."""
        try:
            response = await self.client.post(url, json=body, params=self.settings.query)
        except httpx.HTTPError as err:
            raise error_from_exception(self.name, url, err, self.secrets) from None
        if response.status_code != 200:
            raise self._error(response)
        try:
            return response.json()
        except ValueError:
            raise self._malformed("an answer that is not JSON") from None

    def _malformed(self, what: str) -> Unavailable:
        # The upstream broke its own format: another provider may still answer, so it is retryable.
        return Unavailable(f"{self.name}: {self.pipeline_provider} sent {what}")

    # -- operations ---------------------------------------------------------------------------

    async def generate(self, model: str, prompt: str, options: ChatOptions) -> GenerateResult:
        """The router has no ``/v1/completions``; raw prompts are not offered."""
        raise self._unsupported("raw-prompt generation")

    def generate_stream(self, model: str, prompt: str, options: ChatOptions) -> AsyncIterator[ChatEvent]:
        raise self._unsupported("streaming raw-prompt generation")

    async def embed(
        self, model: str, inputs: Sequence[str], *, truncate: bool = True, deadline: float | None = None
    ) -> EmbedResult:
        """The upstream truncates (or refuses) by its own rules; ``deadline`` is the caller's to enforce."""
        return await embed_result(self.name, f"{self.name}/{model}", inputs, await self.embed_vectors(model, inputs))

    async def embed_vectors(self, model: str, inputs: Sequence[str]) -> list[list[float]]:
        """One vector per input from the feature-extraction pipeline.

        Sentence-embedding models answer one vector per input.  Models without a
        pooling layer answer per-token hidden states instead (``[tokens][dim]``,
        or ``[1][tokens][dim]`` with transformers' batch axis kept); those are
        mean-pooled here, because mean pooling is the sentence-transformers
        default and the upstream gave us nothing better.  The pipeline runs each
        input unpadded, so every token row is a real token and a plain mean is
        the masked mean.
        """
        if not inputs:
            return []
        data = await self._pipeline(self.pipeline_url(model, "feature-extraction"), {"inputs": list(inputs)})
        if _is_vector(data) and len(inputs) == 1:
            data = [data]  # a single input may come back without the outer list
        if not isinstance(data, list) or len(data) != len(inputs):
            got = len(data) if isinstance(data, list) else type(data).__name__
            raise self._malformed(f"{got} embeddings for {len(inputs)} inputs")
        vectors = await asyncio.to_thread(lambda: [_pool(item) for item in data])  # pure Python: off the loop
        if any(v is None for v in vectors):
            raise self._malformed("feature-extraction output that is not a vector or a token matrix")
        return [v for v in vectors if v is not None]

    async def classify(
        self,
        model: str,
        text: str,
        labels: Sequence[str],
        *,
        multi_label: bool = False,
        hypothesis_template: str = "",
        deadline: float | None = None,
    ) -> ClassifyResult:
        scores = await self.classify_scores(
            model, text, labels, multi_label=multi_label, hypothesis_template=hypothesis_template
        )
        return ClassifyResult(
            scores=[LabelScore(label, score) for label, score in scores],
            model=f"{self.name}/{model}",
            strategy="nli",  # the remote zero-shot pipelines are NLI-based
        )

    async def classify_scores(
        self,
        model: str,
        text: str,
        labels: Sequence[str],
        *,
        multi_label: bool = False,
        hypothesis_template: str = "",
    ) -> list[tuple[str, float]]:
        """Zero-shot classification by an NLI model: ``(label, score)`` pairs, highest score first.

        An empty ``hypothesis_template`` is left out so the upstream's own default applies.
        Both answer shapes are accepted: the current ``[{"label", "score"}, ...]`` and the
        legacy Inference API's ``{"sequence", "labels": [...], "scores": [...]}``.
        """
        if not labels:
            raise InvalidArgument(f"{self.name}: zero-shot classification needs at least one candidate label")
        parameters: dict[str, Any] = {"candidate_labels": list(labels), "multi_label": multi_label}
        if hypothesis_template:
            parameters["hypothesis_template"] = hypothesis_template
        data = await self._pipeline(self.pipeline_url(model), {"inputs": text, "parameters": parameters})
        pairs = _label_scores(data)
        if pairs is None:
            raise self._malformed("a zero-shot answer that is neither [{label, score}] nor {labels, scores}")
        return sorted(pairs, key=lambda pair: pair[1], reverse=True)

    async def list_models(self) -> list[str]:
        """The configured ``models``: the router has no cheap listing of what it can serve."""
        return list(self.settings.models)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _is_vector(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(_is_number(v) for v in x)


def _pool(item: Any) -> list[float] | None:
    """A vector as is; token rows (any extra leading axes flattened) mean-pooled; None otherwise."""
    if _is_vector(item):
        return [float(v) for v in item]
    rows: list[list[Any]] = []
    pending: list[Any] = [item]
    while pending:
        node = pending.pop()
        if _is_vector(node):
            rows.append(node)
        elif isinstance(node, list) and node:
            pending.extend(reversed(node))
        else:
            return None
    if not rows or any(len(r) != len(rows[0]) for r in rows):
        return None
    return [math.fsum(float(r[i]) for r in rows) / len(rows) for i in range(len(rows[0]))]


def _label_scores(data: Any) -> list[tuple[str, float]] | None:
    """``(label, score)`` pairs from either zero-shot answer shape; None when it is neither."""
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict) and "labels" in data[0]:
        data = data[0]  # the legacy shape, wrapped in a list as batched calls answer it
    if isinstance(data, dict):
        labels, scores = data.get("labels"), data.get("scores")
        if (
            isinstance(labels, list)
            and isinstance(scores, list)
            and len(labels) == len(scores)
            and all(isinstance(label, str) for label in labels)
            and all(_is_number(s) for s in scores)
        ):
            return [(label, float(s)) for label, s in zip(labels, scores, strict=True)]
        return None
    if isinstance(data, list) and all(
        isinstance(e, dict) and isinstance(e.get("label"), str) and _is_number(e.get("score")) for e in data
    ):
        return [(str(e["label"]), float(e["score"])) for e in data]
    return None
