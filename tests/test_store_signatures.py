"""Model signatures: OpenSSF Model Signing bundles, interoperating both ways with the real
``model_signing`` CLI, and the trust policy the pool applies before loading."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ratatoskr_client import FailedPrecondition
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.local.importer import import_bert_checkpoint
from ratatoskr_server.store.digest import SHA256, hash_file
from ratatoskr_server.store.files import SIGNATURE_FILE
from ratatoskr_server.store.keys import generate_keypair, load_private_key
from ratatoskr_server.store.provenance import SignatureStatus
from ratatoskr_server.store.signature import sign_folder
from ratatoskr_server.store.store import hash_folder
from tests.tiny_bert import make_tiny_bert_checkpoint

MODEL_SIGNING = [sys.executable, "-m", "model_signing"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("signed-models")
    checkpoint = make_tiny_bert_checkpoint(tmp_path_factory.mktemp("ckpt"), seed=61)
    import_bert_checkpoint(checkpoint, root, "tiny")
    return root


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (private, public): two P-256 keys (one trusted, one not) and an Ed25519 key."""
    folder = tmp_path_factory.mktemp("keys")
    made = {}
    for name, kind in (("p256", "ecdsa-p256"), ("other", "ecdsa-p256"), ("ed", "ed25519")):
        private, public = folder / f"{name}.key", folder / f"{name}.pub"
        generate_keypair(kind, private, public)  # type: ignore[arg-type]
        made[name] = (private, public)
    return made


@pytest.fixture
def model(pristine: Path, tmp_path: Path) -> Path:
    shutil.copytree(pristine, tmp_path / "models")
    return tmp_path / "models" / "tiny"


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MODEL_SIGNING, *map(str, args)], capture_output=True, text=True, timeout=120)


def _cli_verify(model: Path, public: Path) -> subprocess.CompletedProcess[str]:
    return _cli("verify", "key", model, "--signature", model / SIGNATURE_FILE, "--public_key", public)


def test_our_p256_signature_verifies_with_the_model_signing_cli(
    model: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    private, public = keys["p256"]
    sign_folder(model, load_private_key(private))
    done = _cli_verify(model, public)
    assert done.returncode == 0 and "Verification succeeded" in done.stdout + done.stderr
    wrong = _cli_verify(model, keys["other"][1])
    assert wrong.returncode != 0
    data = bytearray((model / "model.onnx").read_bytes())
    data[len(data) // 3] ^= 0x01
    (model / "model.onnx").write_bytes(bytes(data))
    changed = _cli_verify(model, public)
    assert changed.returncode != 0 and "model.onnx" in changed.stdout + changed.stderr


async def test_a_cli_signature_verifies_with_ours_and_the_model_serves(
    model: Path, keys: dict[str, tuple[Path, Path]], store_gateway: Callable[..., EmbeddedGateway]
) -> None:
    private, public = keys["p256"]
    done = _cli("sign", "key", model, "--signature", model / SIGNATURE_FILE, "--private_key", private)
    assert done.returncode == 0, done.stderr
    gw = store_gateway(model.parent, require_signature=True, trusted_keys=[public])
    assert len((await gw.embed(["signed"], model="tiny")).vectors) == 1
    provenance = gw.pool.provenance("tiny")
    assert provenance is not None and provenance.signature.status is SignatureStatus.VALID
    assert provenance.signature.algorithm == "ecdsa-p256"
    assert provenance.signature.key_id == json.loads((model / SIGNATURE_FILE).read_text())[
        "verificationMaterial"]["publicKey"]["hint"]  # fmt: skip


async def test_ed25519_signs_in_the_same_envelope_verified_by_us_only(
    model: Path, keys: dict[str, tuple[Path, Path]], store_gateway: Callable[..., EmbeddedGateway]
) -> None:
    private, public = keys["ed"]
    sign_folder(model, load_private_key(private))
    bundle = json.loads((model / SIGNATURE_FILE).read_text())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    assert statement["predicateType"] == "https://model_signing/signature/v1.0"
    gw = store_gateway(model.parent, require_signature=True, trusted_keys=[public])
    assert len((await gw.embed(["signed"], model="tiny")).vectors) == 1
    provenance = gw.pool.provenance("tiny")
    assert provenance is not None and provenance.signature.algorithm == "ed25519"
    assert _cli_verify(model, public).returncode != 0  # the standard tool refuses Ed25519 keys


async def test_unsigned_models_are_refused_only_where_a_signature_is_required(
    model: Path, keys: dict[str, tuple[Path, Path]], store_gateway: Callable[..., EmbeddedGateway]
) -> None:
    lax = store_gateway(model.parent, trusted_keys=[keys["p256"][1]])
    assert len((await lax.embed(["x"], model="tiny")).vectors) == 1
    provenance = lax.pool.provenance("tiny")
    assert provenance is not None and provenance.signature.status is SignatureStatus.UNSIGNED

    for gw in (
        store_gateway(model.parent, require_signature=True, trusted_keys=[keys["p256"][1]]),
        store_gateway(model.parent, models={"tiny": {"require_signature": True}}),
    ):
        with pytest.raises(FailedPrecondition, match=r"model 'tiny' is unsigned \(.*model\.sig is missing\)"):
            await gw.embed(["x"], model="tiny")


async def test_a_key_outside_the_trust_list_is_refused_under_require_signature(
    model: Path, keys: dict[str, tuple[Path, Path]], store_gateway: Callable[..., EmbeddedGateway]
) -> None:
    signer = sign_folder(model, load_private_key(keys["other"][0]))
    strict = store_gateway(model.parent, require_signature=True, trusted_keys=[keys["p256"][1], keys["ed"][1]])
    with pytest.raises(FailedPrecondition, match=f"signed by key {signer}, which is not in store.trusted_keys"):
        await strict.embed(["x"], model="tiny")
    lax = store_gateway(model.parent, trusted_keys=[keys["p256"][1]])
    await lax.embed(["x"], model="tiny")
    provenance = lax.pool.provenance("tiny")
    assert provenance is not None and provenance.signature.status is SignatureStatus.UNTRUSTED
    assert provenance.signature.key_id == signer


async def test_a_model_changed_after_signing_is_refused_naming_the_file_and_digests(
    model: Path, keys: dict[str, tuple[Path, Path]], store_gateway: Callable[..., EmbeddedGateway]
) -> None:
    private, public = keys["p256"]
    sign_folder(model, load_private_key(private))
    signed = hash_file(model / "tokenizer.json", [SHA256]).digests[SHA256]
    text = (model / "tokenizer.json").read_text()
    (model / "tokenizer.json").write_text(text.replace('"[UNK]"', '"[UNX]"', 1))
    now = hash_file(model / "tokenizer.json", [SHA256]).digests[SHA256]
    hash_folder(model).write(model)  # content.json rewritten to match: only the signature can tell
    for require in (True, False):  # a signature by a trusted key that fails is refused either way
        gw = store_gateway(model.parent, require_signature=require, trusted_keys=[public])
        with pytest.raises(FailedPrecondition) as info:
            await gw.embed(["x"], model="tiny")
        assert info.value.message.startswith("model 'tiny' changed after signing: ")
        assert f"tokenizer.json was signed as sha256:{signed} but is now sha256:{now}" in info.value.message


async def test_an_altered_signature_is_refused(
    model: Path, keys: dict[str, tuple[Path, Path]], store_gateway: Callable[..., EmbeddedGateway]
) -> None:
    private, public = keys["p256"]
    sign_folder(model, load_private_key(private))
    bundle = json.loads((model / SIGNATURE_FILE).read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "0" * 64
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (model / SIGNATURE_FILE).write_text(json.dumps(bundle))
    gw = store_gateway(model.parent, require_signature=True, trusted_keys=[public])
    with pytest.raises(FailedPrecondition, match=r"model\.sig does not verify with trusted key"):
        await gw.embed(["x"], model="tiny")
