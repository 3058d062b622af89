"""Sentence vectors from an encoder's output: pooling and normalisation where the graph lacks them."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ratatoskr_server.local.manifest import ModelManifest


def sentence_vectors(
    output: npt.NDArray[np.float32], mask: npt.NDArray[np.int64], manifest: ModelManifest
) -> npt.NDArray[np.float32]:
    """One vector per row: pooled when the graph gives token vectors, L2-normalised when asked."""
    vectors = output
    if manifest.output_kind == "token_embeddings":
        if manifest.pooling == "cls":
            vectors = output[:, 0, :]
        else:
            weights = mask[:, :, None].astype(np.float32)
            vectors = (output * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    if manifest.normalize:
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(vectors, dtype=np.float32)
