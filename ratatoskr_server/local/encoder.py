"""Sentence embeddings from a loaded ONNX encoder: tokenize, run in length-sorted chunks, pool.

Everything here is blocking and runs in the gateway's inference executor,
never on the event loop.  Inputs are sorted by token count before chunking
so each ONNX run pads as little as possible; results return in input order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ratatoskr_client.errors import DeadlineExceeded
from ratatoskr_server.local.manifest import ModelManifest
from ratatoskr_server.local.session import SessionHandle
from ratatoskr_server.local.tokenization import TextTokenizer, TokenizedBatch


@dataclass(frozen=True, slots=True)
class EncodeOutput:
    vectors: npt.NDArray[np.float32]
    tokens: list[int]
    truncated: list[bool]
    tokenization_ms: float
    inference_ms: float


class SentenceEncoder:
    def __init__(self, manifest: ModelManifest, handle: SessionHandle, tokenizer: TextTokenizer) -> None:
        self.manifest = manifest
        self.handle = handle
        self.tokenizer = tokenizer
        graph_inputs = {i.name for i in handle.session.get_inputs()}
        self._feeds = [n for n in manifest.input_names if n in graph_inputs]
        self.dimension = int(manifest.dimension or handle.session.get_outputs()[0].shape[-1])

    @property
    def normalized(self) -> bool:
        """Vectors leave here with unit norm when the graph or we normalise them."""
        return self.manifest.normalize or self.manifest.output_kind == "sentence_embedding"

    def embed(
        self, texts: Sequence[str], *, truncate: bool, max_batch: int, deadline: float | None = None
    ) -> EncodeOutput:
        """Vectors for ``texts``; ``deadline`` (monotonic) drops the work if it passed before a run."""
        t0 = time.perf_counter()
        encodings = self.tokenizer.encode(texts, truncate=truncate)
        t1 = time.perf_counter()
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(order), max_batch):
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded("the request's deadline passed before inference; nothing was computed")
            chunk = order[start : start + max_batch]
            batch = self.tokenizer.pad([encodings[i] for i in chunk])
            out[chunk] = self._run(batch)
        t2 = time.perf_counter()
        return EncodeOutput(
            vectors=out,
            tokens=[len(e.ids) for e in encodings],
            truncated=[self.tokenizer.was_cut(e) for e in encodings],
            tokenization_ms=(t1 - t0) * 1000,
            inference_ms=(t2 - t1) * 1000,
        )

    def _run(self, batch: TokenizedBatch) -> npt.NDArray[np.float32]:
        arrays = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "token_type_ids": batch.token_type_ids,
        }
        (result,) = self.handle.session.run([self.manifest.output_name], {n: arrays[n] for n in self._feeds})
        hidden = np.asarray(result, dtype=np.float32)
        if self.manifest.output_kind == "token_embeddings":
            hidden = _pool(hidden, batch.attention_mask, self.manifest.pooling)
        if self.manifest.normalize:
            norms = np.linalg.norm(hidden, axis=1, keepdims=True)
            hidden = hidden / np.maximum(norms, 1e-12)
        return hidden


def _pool(hidden: npt.NDArray[np.float32], mask: npt.NDArray[np.int64], how: str) -> npt.NDArray[np.float32]:
    """Sentence vectors from token vectors, for models exported without pooling in the graph."""
    if how == "cls":
        return hidden[:, 0, :]
    weights = mask[:, :, None].astype(np.float32)
    summed = (hidden * weights).sum(axis=1)
    return np.asarray(summed / np.maximum(weights.sum(axis=1), 1e-9), dtype=np.float32)
