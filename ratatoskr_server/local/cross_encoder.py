"""Cross-encoder (NLI) outputs: label probabilities and which label means entailment."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ratatoskr_client.errors import FailedPrecondition
from ratatoskr_server.local.manifest import ModelManifest


def softmax(logits: npt.NDArray[np.float32], axis: int = -1) -> npt.NDArray[np.float64]:
    shifted = logits.astype(np.float64) - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return np.asarray(e / e.sum(axis=axis, keepdims=True))


def label_index(manifest: ModelManifest, prefix: str) -> int | None:
    for i, label in enumerate(manifest.labels):
        if label.lower().startswith(prefix):
            return i
    return None


def entailment_index(manifest: ModelManifest, model: str) -> int:
    """The logit column of "entailment": named in the manifest, else found by label name."""
    if manifest.entailment_label is not None:
        if manifest.entailment_label not in manifest.labels:
            raise FailedPrecondition(
                f"model '{model}': entailment_label {manifest.entailment_label!r} is not one of {manifest.labels}"
            )
        return manifest.labels.index(manifest.entailment_label)
    index = label_index(manifest, "entail")
    if index is None:
        raise FailedPrecondition(
            f"model '{model}' has labels {manifest.labels} and none means entailment; "
            "set entailment_label in its manifest.json to use it for NLI-based classification"
        )
    return index
