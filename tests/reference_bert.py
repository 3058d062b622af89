"""A plain-numpy BERT sentence encoder used as ground truth for the ONNX importer.

Written from the BERT paper / Hugging Face ``BertModel`` definition and the
sentence-transformers mean-pooling + Normalize modules, deliberately sharing no
code with ``ratatoskr_server.local.importer``: a bug copied into both would
otherwise pass unnoticed.  Everything runs in float64 so the reference is
strictly more precise than the float32 graph it checks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file

Array = npt.NDArray[np.float64]


def erf(x: Array) -> Array:
    """Element-wise math.erf (numpy has no erf and scipy is not a dependency); exact in float64."""
    flat = np.fromiter(map(math.erf, x.ravel().tolist()), dtype=np.float64, count=x.size)
    return flat.reshape(x.shape)


class NumpyBertEncoder:
    def __init__(self, model_dir: Path) -> None:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        self.num_layers = int(config["num_hidden_layers"])
        self.num_heads = int(config["num_attention_heads"])
        self.hidden = int(config["hidden_size"])
        self.eps = float(config["layer_norm_eps"])
        raw = load_file(Path(model_dir) / "model.safetensors")
        # Checkpoints saved from BertFor* heads nest the encoder under "bert.".
        self.params = {
            key.removeprefix("bert."): value.astype(np.float64) for key, value in raw.items() if value.dtype.kind == "f"
        }

    def _p(self, name: str) -> Array:
        return self.params[name]

    def _linear(self, x: Array, module: str) -> Array:
        # torch.nn.Linear: y = x W^T + b with W stored as [out_features, in_features].
        return x @ self._p(f"{module}.weight").T + self._p(f"{module}.bias")

    def _layer_norm(self, x: Array, module: str) -> Array:
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        normalized: Array = (x - mean) / np.sqrt(var + self.eps)
        return normalized * self._p(f"{module}.weight") + self._p(f"{module}.bias")

    def _attention(self, x: Array, mask: Array, prefix: str) -> Array:
        batch, seq, _ = x.shape
        head_dim = self.hidden // self.num_heads

        def heads(t: Array) -> Array:  # [b, s, h] -> [b, heads, s, d]
            return t.reshape(batch, seq, self.num_heads, head_dim).transpose(0, 2, 1, 3)

        q = heads(self._linear(x, f"{prefix}.self.query"))
        k = heads(self._linear(x, f"{prefix}.self.key"))
        v = heads(self._linear(x, f"{prefix}.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim)
        # Padding keys are excluded outright (probability exactly 0) rather than penalised.
        keep = mask[:, None, None, :] > 0
        scores = np.where(keep, scores, -np.inf)
        scores = scores - scores.max(axis=-1, keepdims=True)
        weights = np.where(keep, np.exp(scores), 0.0)
        weights = weights / weights.sum(axis=-1, keepdims=True)
        context = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, seq, self.hidden)
        return self._linear(context, f"{prefix}.output.dense")

    def hidden_states(
        self,
        input_ids: npt.ArrayLike,
        attention_mask: npt.ArrayLike,
        token_type_ids: npt.ArrayLike,
    ) -> Array:
        ids = np.asarray(input_ids, dtype=np.int64)
        seq = ids.shape[1]
        x = (
            self._p("embeddings.word_embeddings.weight")[ids]
            + self._p("embeddings.position_embeddings.weight")[np.arange(seq)][None, :, :]
            + self._p("embeddings.token_type_embeddings.weight")[np.asarray(token_type_ids, dtype=np.int64)]
        )
        x = self._layer_norm(x, "embeddings.LayerNorm")
        mask = np.asarray(attention_mask, dtype=np.float64)
        for i in range(self.num_layers):
            p = f"encoder.layer.{i}"
            x = self._layer_norm(
                x + self._attention(x, mask, f"{p}.attention"),
                f"{p}.attention.output.LayerNorm",
            )
            inner = self._linear(x, f"{p}.intermediate.dense")
            inner = 0.5 * inner * (1.0 + erf(inner / math.sqrt(2.0)))  # exact GELU
            x = self._layer_norm(x + self._linear(inner, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        return x

    def encode(
        self,
        input_ids: npt.ArrayLike,
        attention_mask: npt.ArrayLike,
        token_type_ids: npt.ArrayLike,
    ) -> Array:
        """Mean over real tokens, then unit length: sentence-transformers' Pooling + Normalize."""
        h = self.hidden_states(input_ids, attention_mask, token_type_ids)
        mask = np.asarray(attention_mask, dtype=np.float64)[:, :, None]
        pooled = (h * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: Array = pooled / np.maximum(norms, 1e-12)
        return out


class NumpyBertClassifier(NumpyBertEncoder):
    """Hugging Face ``BertForSequenceClassification`` at inference (dropout is the identity).

    BertPooler takes the first token's final hidden state ([CLS]) through a dense layer and tanh;
    the classifier is one more dense layer producing a logit per label, in id2label order.
    """

    def __init__(self, model_dir: Path) -> None:
        super().__init__(model_dir)
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        id2label = config.get("id2label") or {}
        self.labels = [str(id2label[key]) for key in sorted(id2label, key=int)]

    def logits(
        self,
        input_ids: npt.ArrayLike,
        attention_mask: npt.ArrayLike,
        token_type_ids: npt.ArrayLike,
    ) -> Array:
        first_token = self.hidden_states(input_ids, attention_mask, token_type_ids)[:, 0, :]
        pooled = np.tanh(self._linear(first_token, "pooler.dense"))
        return self._linear(pooled, "classifier")

    def probabilities(
        self,
        input_ids: npt.ArrayLike,
        attention_mask: npt.ArrayLike,
        token_type_ids: npt.ArrayLike,
    ) -> Array:
        z = self.logits(input_ids, attention_mask, token_type_ids)
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        out: Array = e / e.sum(axis=-1, keepdims=True)
        return out
