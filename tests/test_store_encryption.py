"""Encryption at rest: chunked ChaCha20-Poly1305 frames, key file or Argon2id passphrase, decrypted
in memory only; every way a file can be wrong fails closed with its own message."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ratatoskr_client import FailedPrecondition
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.local.importer import import_bert_checkpoint
from ratatoskr_server.store.crypt import FRAME_SIZE, MAGIC, Argon2Params, KeySource, encrypt_file, write_key_file
from ratatoskr_server.store.sealing import decrypt_model, encrypt_model
from ratatoskr_server.store.store import hash_folder
from tests.conftest import MODEL, run_ratatoskr
from tests.tiny_bert import make_tiny_bert_checkpoint

#: Small Argon2id parameters keep the tests fast; the header records whatever was used.
FAST = Argon2Params(time_cost=1, memory_kib=1024, parallelism=1)
PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sealed-models")
    import_bert_checkpoint(make_tiny_bert_checkpoint(tmp_path_factory.mktemp("ckpt"), seed=91), root, "tiny")
    return root


@pytest.fixture
def model(pristine: Path, tmp_path: Path) -> Path:
    shutil.copytree(pristine, tmp_path / "models")
    return tmp_path / "models" / "tiny"


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


async def test_an_encrypted_minilm_serves_the_plain_ones_embeddings_without_plaintext_on_disk(
    model_root: Path,
    tmp_path: Path,
    store_gateway: Callable[..., EmbeddedGateway],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sealed_root = tmp_path / "sealed"
    shutil.copytree(model_root / MODEL, sealed_root / MODEL)
    key = tmp_path / "minilm.key"
    write_key_file(key)
    encrypt_model(sealed_root / MODEL, KeySource(key_file=key))
    for file in ("model.onnx", "tokenizer.json"):
        assert (sealed_root / MODEL / file).read_bytes().startswith(MAGIC)
    before = _snapshot(sealed_root)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    texts = ["The cat sits on the mat.", "A rocket left the launch pad.", "naïve café ünïcode"]
    plain = await store_gateway(model_root).embed(texts, model=MODEL)
    sealed_gw = store_gateway(sealed_root, key_file=key)
    sealed = await sealed_gw.embed(texts, model=MODEL)
    np.testing.assert_array_equal(np.array(sealed.vectors), np.array(plain.vectors))
    provenance = sealed_gw.pool.provenance(MODEL)
    assert provenance is not None and provenance.encrypted
    assert provenance.address == hash_folder(sealed_root / MODEL).address  # the address of the bytes at rest
    tokens = await sealed_gw.count_tokens(texts, model=MODEL)
    assert tokens.counts == (await store_gateway(model_root).count_tokens(texts, model=MODEL)).counts

    assert _snapshot(sealed_root) == before  # nothing written into the model folder
    assert list(scratch.iterdir()) == []  # nor into the temp directory


async def test_a_passphrase_model_serves_and_wrong_keys_fail_closed(
    model: Path, tmp_path: Path, store_gateway: Callable[..., EmbeddedGateway]
) -> None:
    plain = await store_gateway(model.parent).embed(["x"], model="tiny")
    encrypt_model(model, KeySource(passphrase=PASSPHRASE), params=FAST)
    good = store_gateway(model.parent, passphrase=PASSPHRASE)
    assert PASSPHRASE in good.settings.secret_values()  # so the log redactor masks it wherever it appears
    assert (await good.embed(["x"], model="tiny")).vectors == plain.vectors

    wrong = store_gateway(model.parent, passphrase="Tr0ub4dor&3")
    with pytest.raises(FailedPrecondition) as info:
        await wrong.embed(["x"], model="tiny")
    assert "cannot decrypt tokenizer.json with store.passphrase: wrong key or passphrase" in info.value.message
    assert "Tr0ub4dor" not in info.value.message

    key = tmp_path / "k"
    write_key_file(key)
    per_model = store_gateway(model.parent, models={"tiny": {"key_file": key}}, passphrase=PASSPHRASE)
    with pytest.raises(
        FailedPrecondition, match=f"encrypted with a passphrase \\(Argon2id\\), but the key source is key file {key}"
    ):
        await per_model.embed(["x"], model="tiny")
    with pytest.raises(FailedPrecondition, match="is encrypted but no key is configured"):
        await store_gateway(model.parent).embed(["x"], model="tiny")


async def test_truncated_and_unknown_version_files_are_refused_with_their_own_messages(
    model: Path, tmp_path: Path, store_gateway: Callable[..., EmbeddedGateway]
) -> None:
    key = tmp_path / "k"
    write_key_file(key)
    source = KeySource(key_file=key)
    graph = model / "model.onnx"
    plain_graph = tmp_path / "model.onnx"
    shutil.copyfile(graph, plain_graph)
    encrypt_file(plain_graph, graph, source, frame_size=64 * 1024)
    data = graph.read_bytes()
    graph.write_bytes(data[: len(data) - 100])
    hash_folder(model).write(model)  # content.json agrees: only the format can tell
    gw = store_gateway(model.parent, key_file=key)
    with pytest.raises(
        FailedPrecondition, match=r"model 'tiny': model\.onnx is truncated: frame \d+ of \d+ is cut short"
    ):
        await gw.embed(["x"], model="tiny")

    encrypt_file(plain_graph, graph, source, version=2)
    hash_folder(model).write(model)
    with pytest.raises(FailedPrecondition) as info:
        await gw.embed(["x"], model="tiny")
    assert info.value.message == (
        "model 'tiny': model.onnx is in encrypted format version 2, which this build cannot read (it reads "
        f"version 1); nothing was decrypted with key file {key}"
    )

    encrypt_file(plain_graph, graph, source)
    sealed = bytearray(graph.read_bytes())
    sealed[-40] ^= 0x01  # inside the last frame
    graph.write_bytes(bytes(sealed))
    hash_folder(model).write(model)
    last = -(-plain_graph.stat().st_size // FRAME_SIZE) - 1
    with pytest.raises(FailedPrecondition, match=f"model 'tiny': model\\.onnx is corrupted: frame {last} fails"):
        await gw.embed(["x"], model="tiny")


def test_decrypt_restores_the_original_bytes(model: Path, tmp_path: Path) -> None:
    before = hash_folder(model)
    key = tmp_path / "k"
    write_key_file(key)
    assert encrypt_model(model, KeySource(key_file=key)).address != before.address
    assert decrypt_model(model, KeySource(key_file=key)) == before


def test_cli_encrypt_then_list_shows_it_and_keygen_writes_0600(model: Path, tmp_path: Path) -> None:
    key = tmp_path / "models.key"
    made = run_ratatoskr("models", "keygen", "--kind", "symmetric", str(key))
    assert made.returncode == 0, made.stderr
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    done = run_ratatoskr("models", "encrypt", str(model), "--key", f"file:{key}")
    assert done.returncode == 0, done.stderr
    assert (model / "model.onnx").read_bytes().startswith(MAGIC)
    config = tmp_path / "c.toml"
    config.write_text(f'[local]\nmodel_dir = "{model.parent}"\n[store]\nkey_file = "{key}"\n')
    listed = run_ratatoskr("models", "list", "--no-remote", "--config", str(config), "--socket", "/nonexistent")
    assert listed.returncode == 0 and ", encrypted" in listed.stdout
    verified = run_ratatoskr("models", "verify", "tiny", "--config", str(config))
    assert verified.returncode == 0, verified.stderr
    env_missing = run_ratatoskr("models", "decrypt", str(model), "--key", "env:RATATOSKR_TEST_UNSET_PASSPHRASE")
    assert env_missing.returncode == 1 and "RATATOSKR_TEST_UNSET_PASSPHRASE is unset or empty" in env_missing.stderr
    assert os.environ.get("RATATOSKR_TEST_UNSET_PASSPHRASE") is None
