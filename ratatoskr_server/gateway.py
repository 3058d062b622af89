"""The façade every way in calls: the daemon's servicers and the embedded ``auto()`` alike.

It validates requests against the configured limits, picks the model and
strategy, and leaves blocking work to the local pool's batchers, which run
it in one bounded executor so the event loop never stalls.  It speaks domain
types only; protobuf stays at the RPC edge.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import numpy as np

from ratatoskr_client.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, Unimplemented
from ratatoskr_client.types import (
    ClassifyResult,
    CountTokensResult,
    EmbedResult,
    LabelScore,
    LoadedModel,
    NliPrediction,
    NliResult,
    Task,
    Timing,
    TokenizeResult,
    Usage,
)
from ratatoskr_server.config import Settings
from ratatoskr_server.local.cross_encoder import entailment_index, label_index, softmax
from ratatoskr_server.local.model import Inference, LocalModel
from ratatoskr_server.local.pool import LocalModelPool

log = logging.getLogger(__name__)

DEFAULT_HYPOTHESIS_TEMPLATE = "This example is {}."
#: Embedding-based zero-shot turns cosines into a distribution with softmax(cos / T); cosines of
#: unrelated MiniLM sentences sit within a few hundredths, so a small T keeps the ranking legible.
EMBEDDING_SOFTMAX_TEMPERATURE = 0.05


def _timing(arrived: float, inference: Inference, extra_inference_ms: float = 0.0) -> Timing:
    return Timing(
        queue_ms=inference.queue_ms,
        tokenization_ms=inference.tokenization_ms,
        inference_ms=inference.inference_ms + extra_inference_ms,
        total_ms=(time.perf_counter() - arrived) * 1000,
        input_tokens=sum(inference.tokens),
    )


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._executor = ThreadPoolExecutor(
            max_workers=settings.local.inference_workers, thread_name_prefix="ratatoskr-infer"
        )
        self.pool = LocalModelPool(settings, self._executor)

    async def start(self) -> None:
        """Load the models named in ``local.preload``; the daemon reports SERVING after this."""
        self.pool.start()
        for name in self.settings.local.preload:
            await self.load_model(name)

    def apply_settings(self, settings: Settings) -> None:
        """Take reloadable settings (limits, declarations, budget); the executor size needs a restart."""
        self.settings = settings
        self.pool.update_settings(settings)

    # -- helpers -----------------------------------------------------------------------------------
    @asynccontextmanager
    async def _model(self, name: str, tasks: tuple[Task, ...], timeout: float | None) -> AsyncIterator[LocalModel]:
        """Lease ``name``, check it can do one of ``tasks``, and bound the whole call by ``timeout``."""
        try:
            async with asyncio.timeout(timeout), self.pool.lease(name) as model:
                if model.task not in tasks:
                    wanted = " or ".join(t.value for t in tasks)
                    raise FailedPrecondition(
                        f"model '{model.name}' serves the {model.task.value} task; this call needs one that "
                        f"serves {wanted}"
                    )
                yield model
        except TimeoutError:
            raise DeadlineExceeded(f"the request's deadline passed before model '{name}' answered") from None

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        return time.monotonic() + timeout if timeout is not None else None

    def _check_texts(self, texts: Sequence[str], field: str = "inputs", item: str = "input") -> None:
        limits = self.settings.limits
        if not texts:
            raise InvalidArgument(f"{field} is empty: send at least one")
        if len(texts) > limits.max_inputs_per_request:
            raise InvalidArgument(
                f"{len(texts)} {field} exceed the limit of {limits.max_inputs_per_request} per request "
                "(limits.max_inputs_per_request); split them over several calls"
            )
        for i, text in enumerate(texts):
            if len(text) > limits.max_input_chars:
                raise InvalidArgument(
                    f"{item} {i} is {len(text)} characters; the limit is {limits.max_input_chars} "
                    "(limits.max_input_chars)"
                )

    # -- model calls -------------------------------------------------------------------------------
    async def embed(
        self,
        inputs: Sequence[str],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> EmbedResult:
        arrived = time.perf_counter()
        if not inputs:
            raise InvalidArgument("inputs is empty: send at least one text to embed")
        self._check_texts(inputs)
        name = model or self.settings.local.default_embed_model
        async with self._model(name, (Task.EMBED,), timeout) as m:
            out = await m.infer(inputs, truncate=truncate, deadline=self._deadline(timeout), what="input")
            tokens = sum(out.tokens)
            return EmbedResult(
                vectors=out.rows.tolist(),
                tokens=out.tokens,
                truncated=out.truncated,
                dimension=m.dimension,
                model=m.name,
                normalized=m.normalized,
                usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
                timing=_timing(arrived, out),
            )

    async def nli(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> NliResult:
        arrived = time.perf_counter()
        self._check_texts([p + h for p, h in pairs], "pairs", "pair")
        name = model or self.settings.local.default_nli_model
        if not name:
            raise InvalidArgument("no model given and no default NLI model is configured (local.default_nli_model)")
        async with self._model(name, (Task.NLI, Task.CLASSIFY), timeout) as m:
            if m.manifest.output_kind != "logits":
                raise FailedPrecondition(f"model '{m.name}' has no classification head")
            out = await m.infer(list(pairs), truncate=truncate, deadline=self._deadline(timeout), what="pair")
            probs = softmax(out.rows)
            labels = m.manifest.labels
            predictions = [
                NliPrediction(
                    scores=[LabelScore(label, float(p)) for label, p in zip(labels, row, strict=True)],
                    label=labels[int(np.argmax(row))],
                )
                for row in probs
            ]
            tokens = sum(out.tokens)
            return NliResult(
                predictions=predictions,
                model=m.name,
                usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
                timing=_timing(arrived, out),
            )

    async def classify(
        self,
        text: str,
        labels: Sequence[str],
        *,
        model: str = "",
        multi_label: bool = False,
        hypothesis_template: str = "",
        timeout: float | None = None,
    ) -> ClassifyResult:
        """Zero-shot: NLI strategy for cross-encoders, embedding strategy for embedding models."""
        arrived = time.perf_counter()
        self._check_texts([text], "text", "text")
        if not labels:
            raise InvalidArgument("candidate_labels is empty: give at least one label")
        if len(set(labels)) != len(labels):
            raise InvalidArgument("candidate_labels has duplicates")
        self._check_texts(list(labels), "candidate_labels", "label")
        if hypothesis_template and "{}" not in hypothesis_template:
            raise InvalidArgument(f"hypothesis_template {hypothesis_template!r} has no {{}} for the label")
        name = model or self.settings.local.default_classify_model
        deadline = self._deadline(timeout)
        async with self._model(name, (Task.NLI, Task.CLASSIFY, Task.EMBED), timeout) as m:
            if m.manifest.output_kind == "logits":
                template = hypothesis_template or DEFAULT_HYPOTHESIS_TEMPLATE
                pairs = [(text, template.format(label)) for label in labels]
                out = await m.infer(pairs, truncate=True, deadline=deadline, what="pair")
                scores = self._nli_scores(m, out.rows, multi_label)
                strategy = "nli"
                timing = _timing(arrived, out)
                tokens = sum(out.tokens)
            else:
                descriptions = [hypothesis_template.format(label) if hypothesis_template else label for label in labels]
                out = await m.infer([text, *descriptions], truncate=True, deadline=deadline, what="input")
                vectors = out.rows / np.maximum(np.linalg.norm(out.rows, axis=1, keepdims=True), 1e-12)
                cosines = vectors[1:] @ vectors[0]
                if multi_label:
                    scores = np.clip(cosines, 0.0, 1.0).astype(np.float64)
                else:
                    scores = softmax((cosines / EMBEDDING_SOFTMAX_TEMPERATURE).astype(np.float32))
                strategy = "embedding"
                timing = _timing(arrived, out)
                tokens = sum(out.tokens)
            ranked = sorted(
                (LabelScore(label, float(s)) for label, s in zip(labels, scores, strict=True)),
                key=lambda ls: ls.score,
                reverse=True,
            )
            return ClassifyResult(
                scores=ranked,
                model=m.name,
                strategy=strategy,
                usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
                timing=timing,
            )

    @staticmethod
    def _nli_scores(m: LocalModel, logits: np.ndarray, multi_label: bool) -> np.ndarray:
        """As the NLI zero-shot recipe: softmax of entailment across labels, or per label vs contradiction."""
        entail = entailment_index(m.manifest, m.name)
        if not multi_label:
            return softmax(logits[:, entail].astype(np.float32), axis=0)
        contra = label_index(m.manifest, "contradict")
        if contra is None:
            # Two-label heads ("entailment" vs "not"): the other column plays contradiction.
            others = [i for i in range(logits.shape[1]) if i != entail]
            if len(others) != 1:
                raise FailedPrecondition(f"model '{m.name}' has no contradiction label for multi_label scoring")
            contra = others[0]
        return softmax(logits[:, [contra, entail]].astype(np.float32))[:, 1]

    async def tokenize(
        self, text: str, *, model: str = "", add_special_tokens: bool = True, timeout: float | None = None
    ) -> TokenizeResult:
        arrived = time.perf_counter()
        self._check_texts([text], "text", "text")
        tokenizer = await self.pool.tokenizer(model or self.settings.local.default_embed_model)
        tokens = tokenizer.tokens(text, add_special_tokens=add_special_tokens)
        elapsed = (time.perf_counter() - arrived) * 1000
        return TokenizeResult(
            tokens=tokens,
            model=tokenizer.model_name,
            timing=Timing(tokenization_ms=elapsed, total_ms=elapsed, input_tokens=len(tokens)),
        )

    async def count_tokens(
        self, texts: Sequence[str], *, model: str = "", timeout: float | None = None
    ) -> CountTokensResult:
        arrived = time.perf_counter()
        self._check_texts(texts, "texts", "text")
        tokenizer = await self.pool.tokenizer(model or self.settings.local.default_embed_model)
        if len(texts) > 16:
            counts = await asyncio.get_running_loop().run_in_executor(self._executor, tokenizer.count, list(texts))
        else:
            counts = tokenizer.count(texts)
        elapsed = (time.perf_counter() - arrived) * 1000
        return CountTokensResult(
            counts=counts,
            total=sum(counts),
            model=tokenizer.model_name,
            timing=Timing(tokenization_ms=elapsed, total_ms=elapsed, input_tokens=sum(counts)),
        )

    async def count_message_tokens(self, *, model: str = "") -> CountTokensResult:
        raise Unimplemented("counting chat messages needs chat templates, which are not built yet; send texts")

    # -- administration ------------------------------------------------------------------------------
    async def load_model(self, name: str) -> LoadedModel:
        async with self.pool.lease(name):
            pass
        name = self.pool.canonical(name)
        return next(m for m in self.pool.loaded() if m.name == name)

    async def unload_model(self, name: str) -> bool:
        return await self.pool.unload(name)

    def loaded_models(self) -> list[LoadedModel]:
        return self.pool.loaded()

    async def close(self) -> None:
        await self.pool.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
