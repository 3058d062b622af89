"""Embeddings served by the daemon equal an independent numpy forward pass of the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from ratatoskr_server.local.importer import find_default_model_source
from tests.conftest import MODEL, DaemonProcess
from tests.corpus import SENTENCES
from tests.reference_bert import NumpyBertEncoder


@pytest.fixture(scope="module")
def reference() -> tuple[NumpyBertEncoder, Tokenizer]:
    source = find_default_model_source()
    assert source is not None
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(256)
    return NumpyBertEncoder(source), tokenizer


def _reference_vector(ref: tuple[NumpyBertEncoder, Tokenizer], text: str) -> np.ndarray:
    model, tokenizer = ref
    enc = tokenizer.encode(text)
    ids = np.array([enc.ids], dtype=np.int64)
    return model.encode(ids, np.ones_like(ids), np.array([enc.type_ids], dtype=np.int64))[0]


def test_daemon_matches_numpy_reference(daemon: DaemonProcess, reference: tuple[NumpyBertEncoder, Tokenizer]) -> None:
    assert len(SENTENCES) >= 20
    with daemon.client(timeout=60) as client:
        result = client.embed(SENTENCES)
    served = np.array(result.vectors, dtype=np.float64)
    expected = np.stack([_reference_vector(reference, s) for s in SENTENCES])
    cosines = (served * expected).sum(axis=1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosines.min() >= 0.9999, dict(zip(SENTENCES, cosines.round(6), strict=True))
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


def test_semantic_sanity(daemon: DaemonProcess) -> None:
    texts = [
        "A man is playing a guitar.",
        "Someone is strumming a guitar.",
        "The central bank raised interest rates again.",
        "How do I reset my password?",
        "I forgot my login credentials and need a new password.",
    ]
    with daemon.client(timeout=30) as client:
        v = np.array(client.embed(texts).vectors)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert sim[3, 4] > sim[3, 2] + 0.3
    assert sim[3, 4] > sim[3, 0]


async def test_aliases_name_local_models_too(model_root: Path) -> None:
    from ratatoskr_server.config import load_settings
    from ratatoskr_server.embedded import EmbeddedGateway

    aliases = {"mini": f"local/{MODEL}", "mini2": MODEL}
    gw = EmbeddedGateway(load_settings(local={"model_dir": model_root, "preload": []}, aliases=aliases))
    try:
        direct = await gw.embed(["alias"], model=MODEL)
        for alias in aliases:
            assert (await gw.embed(["alias"], model=alias)).vectors == direct.vectors
            assert (await gw.count_tokens(["alias"], model=alias)).total == direct.tokens[0]
    finally:
        await gw.close()
