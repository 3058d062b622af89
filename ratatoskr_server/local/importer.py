"""Turn a BERT-family safetensors checkpoint into a self-contained ONNX model directory.

The graph is written op by op with ``onnx.helper`` instead of being traced with torch:
the daemon must be able to import models on machines that only have numpy and
onnxruntime.  Heads live inside the graph so that the runtime gets finished outputs and
never has to know how a model pools: sentence encoders end in mean pooling + L2
normalisation, sequence classifiers (cross-encoders, NLI) in BERT's [CLS] pooler and
classifier, emitting logits.

Only the encoder body is architecture specific; both heads consume the hidden-state
tensor that :func:`_encoder_body` returns.

:func:`quantize_model` derives an int8 sibling of an imported model and measures how far
its outputs drift from the float32 original, so the user decides with numbers in hand.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

from ratatoskr_server.local.discovery import find_default_model_source
from ratatoskr_server.local.manifest import MANIFEST_FILE, ModelManifest
from ratatoskr_server.store.store import hash_folder

__all__ = [
    "QUANTIZATION_CHECK_SENTENCES",
    "Head",
    "QuantizeReport",
    "find_default_model_source",
    "import_bert_checkpoint",
    "quantize_model",
]

OPSET = 17
#: Opset 17 needs IR >= 8; staying at 8 keeps the file loadable by older onnxruntime builds.
IR_VERSION = 8
#: Added to attention scores of padding keys.  Large enough that exp() underflows to exactly
#: 0 in float32, small enough to survive a later float16 conversion (finfo(float16).max ≈ 65504).
MASK_VALUE = -10000.0
SUPPORTED_MODEL_TYPES = frozenset({"bert"})
_WEIGHTS_FILE = "model.safetensors"
_TOKENIZER_FILE = "tokenizer.json"
_ONNX_FILE = "model.onnx"
_WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"

#: Which graph head to build: "auto" reads it from the checkpoint (see :func:`_detect_head`).
Head = Literal["auto", "embed", "classify"]
_SEQUENCE_CLASSIFIER = "BertForSequenceClassification"
#: Task heads whose weights this importer cannot turn into a graph.  Importing such a checkpoint
#: as a sentence encoder would silently serve something nobody trained for that, so "auto"
#: refuses and asks for an explicit head="embed".
_UNSUPPORTED_HEADS = frozenset(
    {
        "BertForTokenClassification",
        "BertForQuestionAnswering",
        "BertForMultipleChoice",
        "BertForNextSentencePrediction",
    }
)

#: int8 weights with activations quantized at run time, one weight scale per output channel.
#: Per-tensor scales cost too much accuracy on MiniLM (min cosine 0.93 vs float32); per-channel
#: keeps it at ~0.98-0.99 for about the same speed-up.  See :func:`_quantize_dynamic`.
QUANTIZATION_SCHEME = "int8-dynamic-per-channel"
#: Fixed inputs for the float32-vs-int8 check: varied in length, script, register and content.
#: Consecutive entries form related pairs (paraphrase, contradiction, neutral), which NLI
#: models read as (premise, hypothesis) in both orders.
QUANTIZATION_CHECK_SENTENCES: tuple[str, ...] = (
    "A man is playing a guitar on stage.",
    "Someone is performing music in front of an audience.",
    "The stock market fell 3.5% on Tuesday, closing at 12,345.67 points.",
    "Shares rose sharply on Tuesday after strong earnings.",
    "A child is riding a red bicycle down the street.",
    "Nobody is outside; the street is empty.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "A fox jumps over a dog.",
    "東京は日本の首都です。",
    "Tokyo is the capital of Japan.",
    "I love pizza 🍕 and tacos 🌮!!!",
    "The restaurant only serves vegetables.",
    "def f(x): return x ** 2  # squares its argument",
    "The function returns the square of its input.",
    "Please call me at +1 (555) 010-9999 before 10:30 p.m. tomorrow, or send an e-mail if the line is busy.",
    "Hi",
)
_QUANTIZED_SUFFIX = "-int8"

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


# --------------------------------------------------------------------------- config + weights


@dataclass(frozen=True)
class _BertConfig:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def parse(cls, raw: Mapping[str, Any], source: Path) -> _BertConfig:
        """Validate the Hugging Face config; refuse anything the graph below would compute wrongly."""
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"{source}: config.json has model_type={model_type!r}; only BERT checkpoints "
                f"({', '.join(sorted(SUPPORTED_MODEL_TYPES))}) can be imported. Export other "
                "architectures to ONNX yourself and write a manifest.json by hand."
            )
        act = raw.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"{source}: hidden_act={act!r} is not supported (only exact 'gelu').")
        pos_type = raw.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise ValueError(f"{source}: position_embedding_type={pos_type!r} is not supported (only 'absolute').")
        try:
            cfg = cls(
                hidden_size=int(raw["hidden_size"]),
                num_layers=int(raw["num_hidden_layers"]),
                num_heads=int(raw["num_attention_heads"]),
                intermediate_size=int(raw["intermediate_size"]),
                max_position_embeddings=int(raw["max_position_embeddings"]),
                type_vocab_size=int(raw.get("type_vocab_size", 2)),
                layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
            )
        except KeyError as exc:
            raise ValueError(f"{source}: config.json lacks the required key {exc.args[0]!r}.") from exc
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(
                f"{source}: hidden_size {cfg.hidden_size} is not divisible by num_attention_heads {cfg.num_heads}."
            )
        return cfg


def _required_tensors(cfg: _BertConfig) -> list[str]:
    names = [
        _WORD_EMBEDDINGS,
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
    ]
    per_layer = [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "attention.output.LayerNorm",
        "intermediate.dense",
        "output.dense",
        "output.LayerNorm",
    ]
    for i in range(cfg.num_layers):
        for module in per_layer:
            names += [
                f"encoder.layer.{i}.{module}.weight",
                f"encoder.layer.{i}.{module}.bias",
            ]
    return names


class _Weights:
    """Checkpoint tensors addressed without the optional model prefix ("bert." in BertFor* heads)."""

    def __init__(self, tensors: Mapping[str, npt.NDArray[Any]], cfg: _BertConfig, source: Path) -> None:
        self._tensors = tensors
        # The prefix is whatever precedes the word-embedding table: "" or "bert." in practice.
        prefixes = [k.removesuffix(_WORD_EMBEDDINGS) for k in tensors if k.endswith(_WORD_EMBEDDINGS)]
        self.prefix = min(prefixes, key=len, default="")
        missing = [n for n in _required_tensors(cfg) if self.prefix + n not in tensors]
        if missing:
            shown = ", ".join(missing[:8]) + (f" (and {len(missing) - 8} more)" if len(missing) > 8 else "")
            raise ValueError(f"{source / _WEIGHTS_FILE} is not a complete BERT checkpoint; missing tensors: {shown}.")

    def __call__(self, name: str) -> FloatArray:
        return np.asarray(self._tensors[self.prefix + name], dtype=np.float32)

    def exact(self, full_name: str) -> FloatArray:
        """A tensor by its full checkpoint name (heads sit outside the prefix: "classifier.weight")."""
        return np.asarray(self._tensors[full_name], dtype=np.float32)

    def find_module(self, *modules: str) -> str | None:
        """The first of ``modules`` (tried with and without the prefix) that has both weight and bias."""
        for module in modules:
            for candidate in (self.prefix + module, module):
                if f"{candidate}.weight" in self._tensors and f"{candidate}.bias" in self._tensors:
                    return candidate
        return None


# --------------------------------------------------------------------------- head detection


@dataclass(frozen=True)
class _ClassifierHead:
    """Where a sequence-classification head's weights are, and its label names in logit order."""

    pooler: str
    classifier: str
    labels: tuple[str, ...]

    @property
    def entailment_label(self) -> str | None:
        """The NLI "entails" label; its presence is what makes a classifier an NLI model."""
        return next((label for label in self.labels if label.lower().startswith("entail")), None)


def _label_names(raw: Mapping[str, Any], rows: int, source: Path) -> tuple[str, ...]:
    """Label names in logit order from id2label, whose keys must be exactly 0..rows-1."""
    id2label = raw.get("id2label")
    if id2label is None:
        # Without names the logits are still usable; HF's own default names them the same way.
        return tuple(f"LABEL_{i}" for i in range(rows))
    if not isinstance(id2label, Mapping):
        raise ValueError(f"{source}: config.json's id2label must be an object mapping ids to label names.")
    try:
        by_id = {int(key): str(value) for key, value in id2label.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: config.json's id2label has a non-integer id: {exc}") from exc
    if sorted(by_id) != list(range(rows)):
        raise ValueError(
            f"{source}: config.json's id2label has ids {sorted(by_id)} but the classifier has {rows} outputs; "
            f"id2label must name each of 0..{rows - 1} exactly once."
        )
    labels = tuple(by_id[i] for i in range(rows))
    if len(set(labels)) != rows:
        raise ValueError(
            f"{source}: config.json's id2label repeats a label name ({list(labels)}); names must be unique."
        )
    return labels


def _detect_head(
    raw: Mapping[str, Any], w: _Weights, cfg: _BertConfig, head: Head, source: Path
) -> _ClassifierHead | None:
    """None for a sentence encoder, else the validated classification head.

    "auto" picks classification when the config says BertForSequenceClassification, or when the
    checkpoint carries classifier weights and id2label names at least two labels (configs saved
    by other tools often omit ``architectures``).  Everything else with a plain BERT body
    (BertModel, BertForMaskedLM, sentence-transformers folders) is a sentence encoder.
    """
    if head not in get_args(Head):
        raise ValueError(f"head={head!r} is not one of {', '.join(get_args(Head))}.")
    if head == "embed":
        return None
    raw_archs = raw.get("architectures") or []
    archs = {str(a) for a in raw_archs} if isinstance(raw_archs, list) else set()
    classifier = w.find_module("classifier")
    id2label = raw.get("id2label")
    labelled = isinstance(id2label, Mapping) and len(id2label) >= 2
    if head == "auto":
        if _SEQUENCE_CLASSIFIER not in archs and (unsupported := sorted(archs & _UNSUPPORTED_HEADS)):
            raise ValueError(
                f"{source}: the {unsupported[0]} head cannot be imported (only sentence encoders and "
                f"{_SEQUENCE_CLASSIFIER}). Pass head='embed' to import just its encoder as a "
                "mean-pooled sentence-embedding model."
            )
        if _SEQUENCE_CLASSIFIER not in archs and not (classifier and labelled):
            return None

    where = f"{source / _WEIGHTS_FILE}"
    if classifier is None:
        raise ValueError(
            f"{where} has no classifier.weight/classifier.bias, so it cannot be imported as a sequence "
            "classifier; import it with head='embed' if it is a sentence encoder."
        )
    pooler = w.find_module("pooler.dense", "bert.pooler.dense")
    if pooler is None:
        raise ValueError(
            f"{where} has classifier weights but no pooler (pooler.dense.weight/bias): only BERT's "
            "[CLS] -> pooler -> classifier head is supported. Use head='embed' to import just the encoder."
        )
    problem = raw.get("problem_type")
    if problem not in (None, "single_label_classification"):
        raise ValueError(
            f"{source}: problem_type={problem!r} is not supported; only single-label classification "
            "(softmax over the logits) can be served."
        )
    weight = w.exact(f"{classifier}.weight")
    rows = weight.shape[0] if weight.ndim == 2 else 0
    if weight.shape != (rows, cfg.hidden_size) or w.exact(f"{classifier}.bias").shape != (rows,):
        raise ValueError(
            f"{where}: {classifier}.weight has shape {weight.shape}; expected [num_labels, {cfg.hidden_size}] "
            "with a matching bias."
        )
    if rows < 2:
        raise ValueError(
            f"{where}: the classifier has {rows} output(s); regression heads are not supported, at least 2 labels are."
        )
    hidden = (cfg.hidden_size, cfg.hidden_size)
    if w.exact(f"{pooler}.weight").shape != hidden or w.exact(f"{pooler}.bias").shape != (cfg.hidden_size,):
        raise ValueError(f"{where}: {pooler}.weight must be {list(hidden)} with a [{cfg.hidden_size}] bias.")
    return _ClassifierHead(pooler=pooler, classifier=classifier, labels=_label_names(raw, rows, source))


# --------------------------------------------------------------------------- graph building


@dataclass
class _Graph:
    """Accumulates nodes and initializers; every tensor name is chosen explicitly and must be unique."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[TensorProto] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise AssertionError(f"duplicate tensor name {name!r}")
        self._names.add(name)
        return name

    def op(self, op_type: str, inputs: Sequence[str], out: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, list(inputs), [self._claim(out)], name=out, **attrs))
        return out

    def const(self, name: str, array: npt.NDArray[Any]) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), self._claim(name)))
        return name

    def scalar(self, value: float) -> str:
        """A shared float32 scalar constant (broadcasts against any activation)."""
        name = f"const/{value!r}"
        if name not in self._names:
            self.const(name, np.array(value, dtype=np.float32))
        return name

    def ints(self, name: str, values: Sequence[int]) -> str:
        """A shared int64 vector constant (shapes, axes)."""
        if name not in self._names:
            self.const(name, np.array(values, dtype=np.int64))
        return name


def _linear(g: _Graph, x: str, weight: FloatArray, bias: FloatArray, module: str, out: str) -> str:
    """x @ W^T + b.  torch stores Linear weights [out, in]; storing [in, out] lets MatMul take them as is."""
    w_name = g.const(f"{module}.weight", weight.T)
    b_name = g.const(f"{module}.bias", bias)
    return g.op("Add", [g.op("MatMul", [x, w_name], f"{out}/matmul"), b_name], out)


def _dense(g: _Graph, x: str, w: _Weights, module: str, out: str) -> str:
    """A Linear layer of the encoder body, its weights named without the checkpoint prefix."""
    return _linear(g, x, w(f"{module}.weight"), w(f"{module}.bias"), module, out)


def _layer_norm(g: _Graph, x: str, w: _Weights, module: str, eps: float, out: str) -> str:
    scale = g.const(f"{module}.weight", w(f"{module}.weight"))
    bias = g.const(f"{module}.bias", w(f"{module}.bias"))
    return g.op("LayerNormalization", [x, scale, bias], out, axis=-1, epsilon=eps)


def _embeddings(g: _Graph, w: _Weights, cfg: _BertConfig) -> str:
    """word + absolute position + token type embeddings, then LayerNorm -> [batch, seq, hidden].

    The position rows 0..seq-1 are a Slice of the table up to the runtime sequence length, so one
    graph serves every length.  (Gather(table, Range(0, seq)) means the same, but onnxruntime's
    GatherToSlice rewrite of that pattern fails at run time with scalar Range bounds.)
    """
    words = g.op(
        "Gather",
        [g.const(_WORD_EMBEDDINGS, w(_WORD_EMBEDDINGS)), "input_ids"],
        "emb/words",
    )
    types_table = g.const(
        "embeddings.token_type_embeddings.weight",
        w("embeddings.token_type_embeddings.weight"),
    )
    types = g.op("Gather", [types_table, "token_type_ids"], "emb/types")

    seq_len = g.op("Shape", ["input_ids"], "emb/seq_len", start=1, end=2)  # [seq], 1-D
    pos_table = g.const(
        "embeddings.position_embeddings.weight",
        w("embeddings.position_embeddings.weight"),
    )
    zero = g.ints("emb/zero", [0])
    # [seq, hidden]; broadcasts over the batch in the Add below.
    pos = g.op("Slice", [pos_table, zero, seq_len, zero], "emb/pos")

    total = g.op("Add", [g.op("Add", [words, types], "emb/words_types"), pos], "emb/sum")
    return _layer_norm(g, total, w, "embeddings.LayerNorm", cfg.layer_norm_eps, "emb/out")


def _attention_bias(g: _Graph) -> str:
    """(1 - mask) * MASK_VALUE shaped [batch, 1, 1, seq]: added to scores so padding keys get ~0 weight."""
    mask = g.op("Cast", ["attention_mask"], "mask/float", to=TensorProto.FLOAT)
    inverted = g.op("Sub", [g.scalar(1.0), mask], "mask/inverted")
    bias = g.op("Mul", [inverted, g.scalar(MASK_VALUE)], "mask/bias2d")
    return g.op("Unsqueeze", [bias, g.ints("axes/1_2", [1, 2])], "mask/bias")


def _self_attention(g: _Graph, x: str, bias: str, w: _Weights, cfg: _BertConfig, i: int) -> str:
    """Multi-head scaled dot-product attention; returns the context before the output projection."""
    p, s = f"encoder.layer.{i}.attention.self", f"l{i}/attn"
    # Reshape treats 0 as "keep this dim", so batch and seq stay symbolic.
    heads = g.ints("shape/heads", [0, 0, cfg.num_heads, cfg.head_dim])

    def split(name: str, perm: list[int]) -> str:
        proj = _dense(g, x, w, f"{p}.{name}", f"{s}/{name}")
        return g.op(
            "Transpose",
            [g.op("Reshape", [proj, heads], f"{s}/{name}_heads")],
            f"{s}/{name}_t",
            perm=perm,
        )

    q = split("query", [0, 2, 1, 3])  # [batch, heads, seq, head_dim]
    k = split("key", [0, 2, 3, 1])  # [batch, heads, head_dim, seq]
    v = split("value", [0, 2, 1, 3])
    scores = g.op("MatMul", [q, k], f"{s}/scores")
    scaled = g.op("Mul", [scores, g.scalar(1.0 / math.sqrt(cfg.head_dim))], f"{s}/scaled")
    probs = g.op("Softmax", [g.op("Add", [scaled, bias], f"{s}/masked")], f"{s}/probs", axis=-1)
    ctx = g.op(
        "Transpose",
        [g.op("MatMul", [probs, v], f"{s}/ctx_heads")],
        f"{s}/ctx_t",
        perm=[0, 2, 1, 3],
    )
    return g.op("Reshape", [ctx, g.ints("shape/merge", [0, 0, cfg.hidden_size])], f"{s}/ctx")


def _gelu(g: _Graph, x: str, out: str) -> str:
    """Exact GELU, 0.5 * x * (1 + erf(x / sqrt(2))); onnxruntime fuses this pattern into one kernel."""
    erf = g.op(
        "Erf",
        [g.op("Mul", [x, g.scalar(1.0 / math.sqrt(2.0))], f"{out}/scaled")],
        f"{out}/erf",
    )
    gate = g.op("Add", [erf, g.scalar(1.0)], f"{out}/gate")
    return g.op("Mul", [g.op("Mul", [x, gate], f"{out}/xgate"), g.scalar(0.5)], out)


def _encoder_layer(g: _Graph, x: str, bias: str, w: _Weights, cfg: _BertConfig, i: int) -> str:
    """Post-LN transformer block: attention -> residual+LN -> GELU FFN -> residual+LN."""
    p, s, eps = f"encoder.layer.{i}", f"l{i}", cfg.layer_norm_eps
    ctx = _self_attention(g, x, bias, w, cfg, i)
    attn = _dense(g, ctx, w, f"{p}.attention.output.dense", f"{s}/attn_out")
    attn_res = g.op("Add", [attn, x], f"{s}/attn_res")
    h = _layer_norm(g, attn_res, w, f"{p}.attention.output.LayerNorm", eps, f"{s}/attn_ln")
    inter = _gelu(g, _dense(g, h, w, f"{p}.intermediate.dense", f"{s}/ffn_in"), f"{s}/gelu")
    ffn = _dense(g, inter, w, f"{p}.output.dense", f"{s}/ffn_out")
    ffn_res = g.op("Add", [ffn, h], f"{s}/ffn_res")
    return _layer_norm(g, ffn_res, w, f"{p}.output.LayerNorm", eps, f"{s}/out")


def _encoder_body(g: _Graph, w: _Weights, cfg: _BertConfig) -> str:
    """Embeddings + all layers; returns the last hidden state [batch, seq, hidden] for any head."""
    bias = _attention_bias(g)
    h = _embeddings(g, w, cfg)
    for i in range(cfg.num_layers):
        h = _encoder_layer(g, h, bias, w, cfg, i)
    return h


def _mean_pool_normalized(g: _Graph, hidden: str, out: str) -> str:
    """Mask-weighted mean over tokens then L2 normalisation, matching sentence-transformers.

    The clamps (1e-9 tokens, 1e-12 norm) keep an all-padding row finite instead of NaN.
    """
    mask = g.op("Cast", ["attention_mask"], "pool/mask", to=TensorProto.FLOAT)
    mask3 = g.op("Unsqueeze", [mask, g.ints("axes/2", [2])], "pool/mask3")
    axis1 = g.ints("axes/1", [1])
    summed = g.op(
        "ReduceSum",
        [g.op("Mul", [hidden, mask3], "pool/masked"), axis1],
        "pool/sum",
        keepdims=0,
    )
    count = g.op("ReduceSum", [mask, axis1], "pool/count", keepdims=1)  # [batch, 1]
    mean = g.op(
        "Div",
        [summed, g.op("Max", [count, g.scalar(1e-9)], "pool/count_safe")],
        "pool/mean",
    )
    # Unlike ReduceSum (an input since opset 13), ReduceL2 takes axes as an attribute until 18.
    norm = g.op("ReduceL2", [mean], "pool/norm", axes=[1], keepdims=1)
    return g.op("Div", [mean, g.op("Max", [norm, g.scalar(1e-12)], "pool/norm_safe")], out)


def _classification_head(g: _Graph, hidden: str, w: _Weights, head: _ClassifierHead, out: str) -> str:
    """BertForSequenceClassification's head: [CLS] hidden state -> dense + tanh pooler -> classifier logits.

    Dropout is the identity at inference and is left out.  (The index is [0], not a scalar, because
    _Graph.const stores at least 1-D arrays; the Squeeze drops the resulting length-1 axis.)
    """
    first = g.op("Gather", [hidden, g.ints("head/cls_index", [0])], "head/cls3", axis=1)  # [batch, 1, hidden]
    cls = g.op("Squeeze", [first, g.ints("axes/1", [1])], "head/cls")
    dense = _linear(
        g, cls, w.exact(f"{head.pooler}.weight"), w.exact(f"{head.pooler}.bias"), "pooler.dense", "head/pre"
    )
    pooled = g.op("Tanh", [dense], "head/pooled")
    weight, bias = w.exact(f"{head.classifier}.weight"), w.exact(f"{head.classifier}.bias")
    return _linear(g, pooled, weight, bias, "classifier", out)


def _build_model(w: _Weights, cfg: _BertConfig, head: _ClassifierHead | None) -> onnx.ModelProto:
    """Encoder body plus either head; the output is "sentence_embedding" or "logits"."""
    g = _Graph()
    hidden = _encoder_body(g, w, cfg)
    if head is None:
        out = _mean_pool_normalized(g, hidden, "sentence_embedding")
        width, graph_name = cfg.hidden_size, "bert_sentence_encoder"
    else:
        out = _classification_head(g, hidden, w, head, "logits")
        width, graph_name = len(head.labels), "bert_sequence_classifier"
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    output = helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", width])
    graph = helper.make_graph(g.nodes, graph_name, inputs, [output])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="ratatoskr-importer",
    )
    model.ir_version = IR_VERSION
    # Attached after make_model, which deep-copies its graph: spares a copy of every weight.
    model.graph.initializer.extend(g.initializers)
    return model


# --------------------------------------------------------------------------- import entry point


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict):
        return data
    raise ValueError(f"{path} does not contain a JSON object.")


def _require_file(source: Path, file_name: str) -> None:
    if not (source / file_name).is_file():
        raise ValueError(f"{source} is not a Hugging Face checkpoint folder: {file_name} is missing.")


def _resolve_max_length(source: Path, cfg: _BertConfig, requested: int | None) -> int:
    if requested is not None:
        length = requested
    elif (source / "sentence_bert_config.json").is_file():
        length = int(_read_json(source / "sentence_bert_config.json").get("max_seq_length") or 0)
        length = length or cfg.max_position_embeddings
    else:
        length = cfg.max_position_embeddings
    if not 0 < length <= cfg.max_position_embeddings:
        raise ValueError(
            f"max_length {length} is outside 1..{cfg.max_position_embeddings} "
            "(the checkpoint's max_position_embeddings)."
        )
    return length


def import_bert_checkpoint(
    source: Path,
    dest_root: Path,
    name: str,
    *,
    max_length: int | None = None,
    overwrite: bool = False,
    head: Head = "auto",
    step: Callable[[str], None] | None = None,
) -> ModelManifest:
    """Import a BERT checkpoint into ``dest_root/name`` as ONNX + tokenizer + manifest.

    ``head`` chooses the graph's output: "embed" builds a sentence encoder (mean pooling + L2
    norm, task "embed"); "classify" a sequence classifier emitting logits (task "nli" when a
    label starts with "entail", else "classify"); "auto" reads which one the checkpoint is.

    Raises ValueError (with a message fit for the CLI) for unsupported or incomplete checkpoints and
    FileExistsError when the target exists and ``overwrite`` is False.  The directory is assembled
    next to the target and renamed into place, so readers never see a half-written model.
    ``step`` is told the name of each of the ``IMPORT_STEPS`` as it starts (a progress bar's hook).
    """
    step = step or _no_step
    source, dest_root = Path(source), Path(dest_root)
    _check_name(name)
    target = dest_root / name
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it.")
    # Config first: "this is a gpt2 checkpoint" is more useful than "model.safetensors is missing".
    _require_file(source, "config.json")
    raw = _read_json(source / "config.json")
    cfg = _BertConfig.parse(raw, source)
    _require_file(source, _WEIGHTS_FILE)
    _require_file(source, _TOKENIZER_FILE)
    length = _resolve_max_length(source, cfg, max_length)
    step("reading weights")
    weights = _Weights(load_file(source / _WEIGHTS_FILE), cfg, source)
    classifier = _detect_head(raw, weights, cfg, head, source)
    step("building the ONNX graph")
    model = _build_model(weights, cfg, classifier)
    common: dict[str, Any] = {
        "name": name,
        "architecture": "bert",
        "source": str(source),
        "onnx_file": _ONNX_FILE,
        "tokenizer_file": _TOKENIZER_FILE,
        "input_names": ["input_ids", "attention_mask", "token_type_ids"],
        "max_length": length,
    }
    if classifier is None:
        manifest = ModelManifest(
            **common,
            task="embed",
            output_name="sentence_embedding",
            output_kind="sentence_embedding",
            pooling="mean",
            normalize=False,  # the graph already L2-normalises
            dimension=cfg.hidden_size,
        )
    else:
        entailment = classifier.entailment_label
        manifest = ModelManifest(
            **common,
            task="nli" if entailment else "classify",
            output_name="logits",
            output_kind="logits",
            pooling="cls",  # what the head reads; the runtime does no pooling on logits
            labels=list(classifier.labels),
            entailment_label=entailment,
        )

    dest_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.importing-", dir=dest_root))
    try:
        step("writing model.onnx")
        onnx.save_model(model, staging / _ONNX_FILE)
        step("checking the graph")
        # Checking the written file lets the C++ checker read it instead of serialising 90 MB twice.
        onnx.checker.check_model(staging / _ONNX_FILE, full_check=True)
        step("publishing")
        shutil.copyfile(source / _TOKENIZER_FILE, staging / _TOKENIZER_FILE)
        manifest.write(staging)
        # The content manifest last, over every file: the store checks them against it at load.
        hash_folder(staging).write(staging)
        _publish(staging, target, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


#: The steps ``import_bert_checkpoint`` and ``quantize_model`` report, for a bar's length.
IMPORT_STEPS = 5
QUANTIZE_STEPS = 3


def _no_step(_name: str) -> None:
    pass


def _check_name(name: str) -> None:
    if not name or name in {".", ".."} or "/" in name or os.sep in name:
        raise ValueError(f"Invalid model name {name!r}: use a plain directory name.")


def _new_folder_mode(parent: Path) -> int:
    """The mode a new folder gets here (0777 less the umask), read without changing the umask.

    os.umask can only be read by setting it, which races with every other thread creating files.
    """
    probe = Path(tempfile.mkdtemp(prefix=".mode-", dir=parent))
    try:
        probe.rmdir()
        probe.mkdir(0o777)
        return probe.stat().st_mode & 0o777
    finally:
        probe.rmdir()


def _publish(staging: Path, target: Path, *, overwrite: bool) -> None:
    """Move the finished directory into place; an existing one is swapped out, never merged into.

    mkdtemp made the staging folder 0700; the published model gets the mode any new folder
    would (0777 less the umask), so a daemon running as another user can read what root imported.
    """
    os.chmod(staging, _new_folder_mode(target.parent))
    if not target.exists():
        # A concurrent writer that got there first makes rename fail (non-empty target).
        try:
            os.rename(staging, target)
        except OSError as exc:
            raise FileExistsError(f"{target} appeared while importing.") from exc
        return
    if not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it.")
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.replaced-", dir=target.parent))
    os.rename(target, retired / target.name)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(retired / target.name, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)


# --------------------------------------------------------------------------- int8 quantization


@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize_model` wrote and how far int8 drifts from float32 on the check sentences.

    Embedding models fill the cosine fields, classifiers the probability fields; the others stay
    None.  Sizes are of the ONNX files alone, in MiB.
    """

    name: str
    path: Path
    source_path: Path
    quantization: str
    task: str
    output_kind: str
    #: Inputs compared: sentences, or (premise, hypothesis) pairs for NLI models.
    samples: int
    fp32_mb: float
    int8_mb: float
    min_cosine: float | None = None
    mean_cosine: float | None = None
    #: Largest absolute difference of any softmax probability.
    max_prob_diff: float | None = None
    #: Fraction of inputs whose top label is the same in both models.
    argmax_agreement: float | None = None

    @property
    def size_ratio(self) -> float:
        return self.int8_mb / self.fp32_mb if self.fp32_mb else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (paths as strings), plus the size ratio."""
        data: dict[str, Any] = asdict(self)
        data.update(path=str(self.path), source_path=str(self.source_path), size_ratio=self.size_ratio)
        return data

    def summary(self) -> str:
        """One line for humans, e.g. for the CLI."""
        sizes = f"{self.fp32_mb:.1f} MB -> {self.int8_mb:.1f} MB ({self.size_ratio:.0%})"
        if self.min_cosine is not None and self.mean_cosine is not None:
            drift = f"cosine vs fp32 min {self.min_cosine:.4f} mean {self.mean_cosine:.4f}"
        elif self.max_prob_diff is not None and self.argmax_agreement is not None:
            drift = f"max prob diff {self.max_prob_diff:.4f}, same top label {self.argmax_agreement:.0%}"
        else:
            drift = "no accuracy figures"
        return f"{self.name}: {self.quantization}, {sizes}; {drift} over {self.samples} inputs"


def quantize_model(
    model_dir: Path,
    *,
    dest_root: Path | None = None,
    name: str | None = None,
    overwrite: bool = False,
    step: Callable[[str], None] | None = None,
) -> QuantizeReport:
    """Write an int8 copy of an imported model as ``dest_root/name`` and measure its drift.

    Weights are quantized ahead of time (int8, one scale per output channel); activations at run
    time, so no calibration data is needed.  The new directory gets the same tokenizer and a
    manifest that differs only in name, ONNX file and ``quantization``.  ``dest_root`` defaults to
    the model's parent folder and ``name`` to ``<model dir name>-int8``, making the two siblings.

    Both models then run on :data:`QUANTIZATION_CHECK_SENTENCES` on the CPU and the report says how
    far apart their outputs are; whether that is acceptable is the caller's decision.  Raises
    ValueError for a folder without a manifest or one already quantized, FileExistsError when the
    target exists and ``overwrite`` is False.  ``step`` is told each of the ``QUANTIZE_STEPS``.
    """
    step = step or _no_step
    model_dir = Path(model_dir)
    if not (model_dir / MANIFEST_FILE).is_file():
        raise ValueError(f"{model_dir} has no {MANIFEST_FILE}; import the model first.")
    manifest = ModelManifest.read(model_dir)
    if manifest.quantization:
        raise ValueError(f"{model_dir} is already quantized ({manifest.quantization}); quantize the float32 model.")
    fp32_file, tokenizer_file = model_dir / manifest.onnx_file, model_dir / manifest.tokenizer_file
    for required in (fp32_file, tokenizer_file):
        if not required.is_file():
            raise ValueError(f"{model_dir} is incomplete: {required.name} is missing.")
    dest_root = Path(dest_root) if dest_root is not None else model_dir.parent
    name = name or f"{model_dir.name}{_QUANTIZED_SUFFIX}"
    _check_name(name)
    target = dest_root / name
    if target.resolve() == model_dir.resolve():
        raise ValueError(f"The int8 model cannot replace its source {model_dir}; choose another name.")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it.")

    dest_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.quantizing-", dir=dest_root))
    try:
        int8_file = staging / _ONNX_FILE
        step("quantizing to int8")
        _quantize_dynamic(fp32_file, int8_file)
        copied_tokenizer = staging / manifest.tokenizer_file
        copied_tokenizer.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tokenizer_file, copied_tokenizer)
        update = {"name": name, "onnx_file": _ONNX_FILE, "quantization": QUANTIZATION_SCHEME}
        manifest.model_copy(update=update).write(staging)
        hash_folder(staging).write(staging)
        # Measured before publishing: a quantized graph that does not even load never appears.
        step("measuring drift against float32")
        drift = _measure_drift(manifest, fp32_file, int8_file, tokenizer_file)
        sizes = fp32_file.stat().st_size / 2**20, int8_file.stat().st_size / 2**20
        step("publishing")
        _publish(staging, target, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return QuantizeReport(
        name=name,
        path=target,
        source_path=model_dir,
        quantization=QUANTIZATION_SCHEME,
        task=manifest.task,
        output_kind=manifest.output_kind,
        samples=drift.samples,
        fp32_mb=sizes[0],
        int8_mb=sizes[1],
        min_cosine=drift.min_cosine,
        mean_cosine=drift.mean_cosine,
        max_prob_diff=drift.max_prob_diff,
        argmax_agreement=drift.argmax_agreement,
    )


def _quantize_dynamic(src: Path, dest: Path) -> None:
    """onnxruntime's dynamic int8 quantization: QInt8 weights, one scale per output channel, 7-bit range.

    ``reduce_range`` keeps weights in [-64, 63]: x86 CPUs without VNNI (AVX2, plain AVX-512) multiply
    uint8 activations by int8 weights with an instruction whose int16 pair sums saturate, which
    per-channel scales (every channel reaches +-127) make frequent.  On an AVX2 host it cut the
    probability error of small classifiers 2-4x (0.17-0.28 -> 0.04-0.10) and left MiniLM's
    cosine unchanged (min 0.978 -> 0.980); VNNI hosts lose at most a little precision.

    ORT also suggests running ``quant_pre_process`` first.  Its symbolic shape inference needs sympy
    (not a dependency), and without it the pre-processed MiniLM quantized to bit-identical outputs,
    so it is skipped and the suggestion silenced with the rest of the quantizer's log chatter.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_quantizer_logs():
        quantize_dynamic(src, dest, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)


class _DropQuantizerChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        parts = Path(record.pathname).parts
        return record.levelno >= logging.ERROR or not ("onnxruntime" in parts and "quantization" in parts)


@contextmanager
def _quiet_quantizer_logs() -> Iterator[None]:
    """Drop onnxruntime.quantization's below-ERROR records (a line per tensor at INFO, the hint above).

    They are logged through the root logger with ``logging.info()``/``logging.warning()``, which
    also call ``basicConfig()`` when the root has no handler; a NullHandler for the duration
    spares the process that side effect.
    """
    root = logging.getLogger()
    chatter = _DropQuantizerChatter()
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder is not None:
        root.addHandler(placeholder)
    root.addFilter(chatter)
    try:
        yield
    finally:
        root.removeFilter(chatter)
        if placeholder is not None:
            root.removeHandler(placeholder)


@dataclass(frozen=True)
class _Drift:
    samples: int
    min_cosine: float | None = None
    mean_cosine: float | None = None
    max_prob_diff: float | None = None
    argmax_agreement: float | None = None


def _check_inputs(manifest: ModelManifest) -> list[str] | list[tuple[str, str]]:
    """The check sentences; NLI models read them as (premise, hypothesis) pairs, both ways round."""
    texts = list(QUANTIZATION_CHECK_SENTENCES)
    if manifest.task != "nli":
        return texts
    pairs = list(zip(texts[0::2], texts[1::2], strict=True))
    return pairs + [(b, a) for a, b in pairs]


def _tokenize(
    tokenizer_file: Path, manifest: ModelManifest, inputs: list[str] | list[tuple[str, str]]
) -> dict[str, IntArray]:
    """Padded, truncated model inputs as the runtime would build them (pairs get type id 1 on B)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    padding = tok.padding
    pad_id = int(padding["pad_id"]) if padding else (tok.token_to_id("[PAD]") or 0)
    pad_token = str(padding["pad_token"]) if padding else "[PAD]"
    tok.enable_truncation(min(manifest.max_length, manifest.pad_to or manifest.max_length))
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token, length=manifest.pad_to)
    encodings = tok.encode_batch(inputs)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def _run_cpu(onnx_file: Path, feeds: Mapping[str, IntArray], output_name: str) -> npt.NDArray[np.float64]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(onnx_file), sess_options=options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run([output_name], dict(feeds))[0], dtype=np.float64)


def _measure_drift(manifest: ModelManifest, fp32_file: Path, int8_file: Path, tokenizer_file: Path) -> _Drift:
    """Run both graphs on the same batch and compare what the runtime would serve from each."""
    inputs = _check_inputs(manifest)
    arrays = _tokenize(tokenizer_file, manifest, inputs)
    feeds = {n: arrays[n] for n in manifest.input_names}
    ref = _run_cpu(fp32_file, feeds, manifest.output_name)
    got = _run_cpu(int8_file, feeds, manifest.output_name)
    if manifest.output_kind == "logits":
        p_ref, p_got = _softmax(ref), _softmax(got)
        return _Drift(
            samples=len(inputs),
            max_prob_diff=float(np.abs(p_ref - p_got).max()),
            argmax_agreement=float((p_ref.argmax(axis=-1) == p_got.argmax(axis=-1)).mean()),
        )
    if manifest.output_kind == "token_embeddings":
        mask = arrays["attention_mask"].astype(np.float64)[:, :, None]
        if manifest.pooling == "cls":
            ref, got = ref[:, 0], got[:, 0]
        else:
            count = np.maximum(mask.sum(axis=1), 1e-9)
            ref, got = (ref * mask).sum(axis=1) / count, (got * mask).sum(axis=1) / count
    norms = np.maximum(np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1), 1e-12)
    cosines = (ref * got).sum(axis=-1) / norms
    return _Drift(samples=len(inputs), min_cosine=float(cosines.min()), mean_cosine=float(cosines.mean()))


def _softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    out: npt.NDArray[np.float64] = shifted / shifted.sum(axis=-1, keepdims=True)
    return out
