"""The task recipes on a leased local model: embedding, NLI, and zero-shot by NLI or by embedding.

Each takes a model already checked for the task and returns a domain result with its timing parts.
The zero-shot recipes follow the transformers pipeline for cross-encoders (a hypothesis per label,
softmax of entailment) and compare sentence embeddings for embedding models.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ratatoskr_client.errors import FailedPrecondition
from ratatoskr_client.types import (
    ClassifyResult,
    EmbedResult,
    LabelScore,
    NliPrediction,
    NliResult,
    Timing,
    Usage,
)
from ratatoskr_server.local.cross_encoder import entailment_index, label_index, softmax
from ratatoskr_server.local.model import Inference, LocalModel

DEFAULT_HYPOTHESIS_TEMPLATE = "This example is {}."
#: The embedding strategy compares the text with a sentence about each label, not the bare label:
#: on the labelled set in tests/test_nli_classify.py (16 texts, 4 topics) MiniLM ranks the right
#: topic first for 16 with this template, 13 with bare labels and 14 with "This example is {}.".
DEFAULT_EMBEDDING_TEMPLATE = "This text is about {}."
#: Embedding-based zero-shot turns cosines into a distribution with softmax(cos / T); cosines of
#: unrelated MiniLM sentences sit within a few hundredths, so a small T keeps the ranking legible.
EMBEDDING_SOFTMAX_TEMPERATURE = 0.05


def timing(started: float, inference: Inference) -> Timing:
    """The parts of one local call: tokenization, queue and inference add up to at most the total,
    which also holds the recipe's own work (softmax, sorting) around the model run."""
    return Timing(
        queue_ms=inference.queue_ms,
        tokenization_ms=inference.tokenization_ms,
        inference_ms=inference.inference_ms,
        total_ms=(time.perf_counter() - started) * 1000,
        input_tokens=sum(inference.tokens),
    )


def _usage(out: Inference) -> Usage:
    tokens = sum(out.tokens)
    return Usage(prompt_tokens=tokens, total_tokens=tokens)


async def embed(m: LocalModel, inputs: Sequence[str], *, truncate: bool, deadline: float | None) -> EmbedResult:
    started = time.perf_counter()
    out = await m.infer(inputs, truncate=truncate, deadline=deadline, what="input")
    return EmbedResult(
        vectors=out.rows.tolist(),
        tokens=out.tokens,
        truncated=out.truncated,
        dimension=m.dimension,
        model=m.name,
        normalized=m.normalized,
        usage=_usage(out),
        timing=timing(started, out),
    )


async def nli(m: LocalModel, pairs: Sequence[tuple[str, str]], *, truncate: bool, deadline: float | None) -> NliResult:
    started = time.perf_counter()
    if m.manifest.output_kind != "logits":
        raise FailedPrecondition(f"model '{m.name}' has no classification head")
    out = await m.infer(list(pairs), truncate=truncate, deadline=deadline, what="pair")
    probs = softmax(out.rows)
    labels = m.manifest.labels
    predictions = [
        NliPrediction(
            scores=[LabelScore(label, float(p)) for label, p in zip(labels, row, strict=True)],
            label=labels[int(np.argmax(row))],
        )
        for row in probs
    ]
    return NliResult(predictions=predictions, model=m.name, usage=_usage(out), timing=timing(started, out))


async def classify(
    m: LocalModel,
    text: str,
    labels: Sequence[str],
    *,
    multi_label: bool,
    hypothesis_template: str,
    deadline: float | None,
) -> ClassifyResult:
    """Zero-shot: the NLI recipe for cross-encoders, the embedding recipe for embedding models.

    The label goes into the template literally: ``str.format`` would run format specs a caller wrote.
    """
    started = time.perf_counter()
    if m.manifest.output_kind == "logits":
        template = hypothesis_template or DEFAULT_HYPOTHESIS_TEMPLATE
        pairs = [(text, template.replace("{}", label)) for label in labels]
        out = await m.infer(pairs, truncate=True, deadline=deadline, what="pair")
        scores = nli_scores(m, out.rows, multi_label)
        strategy = "nli"
    else:
        template = hypothesis_template or DEFAULT_EMBEDDING_TEMPLATE
        descriptions = [template.replace("{}", label) for label in labels]
        out = await m.infer([text, *descriptions], truncate=True, deadline=deadline, what="input")
        vectors = out.rows / np.maximum(np.linalg.norm(out.rows, axis=1, keepdims=True), 1e-12)
        cosines = vectors[1:] @ vectors[0]
        if multi_label:
            scores = np.clip(cosines, 0.0, 1.0).astype(np.float64)
        else:
            scores = softmax((cosines / EMBEDDING_SOFTMAX_TEMPERATURE).astype(np.float32))
        strategy = "embedding"
    ranked = sorted(
        (LabelScore(label, float(s)) for label, s in zip(labels, scores, strict=True)),
        key=lambda ls: ls.score,
        reverse=True,
    )
    return ClassifyResult(
        scores=ranked, model=m.name, strategy=strategy, usage=_usage(out), timing=timing(started, out)
    )


def nli_scores(m: LocalModel, logits: np.ndarray, multi_label: bool) -> np.ndarray:
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
