"""The trusted model store: content addressing and verification before ONNX Runtime sees a byte.

Real tiny BERT models imported by the real importer, served through the embedded gateway (the
pool, the loader executor and ONNX Runtime all real).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ratatoskr_client import FailedPrecondition
from ratatoskr_server.config import ConfigError, load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.local.importer import import_bert_checkpoint
from ratatoskr_server.store.content import ContentManifest
from ratatoskr_server.store.digest import BLAKE3, hash_file
from ratatoskr_server.store.files import CONTENT_FILE
from ratatoskr_server.store.provenance import Verification
from ratatoskr_server.store.store import hash_folder
from tests.conftest import MODEL, DaemonProcess
from tests.tiny_bert import make_tiny_bert_checkpoint


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny encoders, imported once; each test works on its own copy."""
    root = tmp_path_factory.mktemp("store-models")
    for seed, name in enumerate(["good", "victim"]):
        checkpoint = make_tiny_bert_checkpoint(tmp_path_factory.mktemp(f"ckpt-{name}"), seed=seed + 40)
        import_bert_checkpoint(checkpoint, root, name)
    return root


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    shutil.copytree(pristine, tmp_path / "models")
    return tmp_path / "models"


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_import_writes_a_content_manifest_whose_address_covers_every_file(pristine: Path) -> None:
    folder = pristine / "good"
    content = ContentManifest.parse((folder / CONTENT_FILE).read_bytes(), folder / CONTENT_FILE)
    assert sorted(e.name for e in content.files) == ["manifest.json", "model.onnx", "tokenizer.json"]
    for entry in content.files:
        digest = hash_file(folder / entry.name, [BLAKE3])
        assert (digest.size, digest.digests[BLAKE3]) == (entry.size, entry.blake3)
    assert content.address.startswith("blake3:") and len(content.address) == len("blake3:") + 64
    assert hash_folder(folder) == content
    other = ContentManifest.parse((pristine / "victim" / CONTENT_FILE).read_bytes(), pristine / "victim")
    assert other.address != content.address


@pytest.mark.parametrize("file", ["model.onnx", "tokenizer.json", "manifest.json"])
async def test_a_one_byte_change_is_refused_at_load_and_other_models_still_serve(
    root: Path, store_gateway: Callable[..., EmbeddedGateway], file: str
) -> None:
    listed = {e.name: e.blake3 for e in hash_folder(root / "victim").files}
    _flip_one_byte(root / "victim" / file)
    changed = hash_file(root / "victim" / file, [BLAKE3]).digests[BLAKE3]
    gw = store_gateway(root)
    for _ in range(2):  # refused again on the next request: nothing half-loaded is left behind
        with pytest.raises(FailedPrecondition) as info:
            await gw.embed(["x"], model="victim")
        message = info.value.message
        assert f"model 'victim': {file} does not match {CONTENT_FILE}" in message
        assert f"expected blake3:{listed[file]}" in message and f"found blake3:{changed}" in message
    assert gw.pool.provenance("victim") is None and "victim" not in {m.name for m in gw.pool.loaded()}
    assert len((await gw.embed(["still here"], model="good")).vectors) == 1


async def test_the_content_address_is_the_revision(root: Path, store_gateway: Callable[..., EmbeddedGateway]) -> None:
    gw = store_gateway(root)
    await gw.embed(["x"], model="good")
    address = json.loads((root / "good" / CONTENT_FILE).read_text())["address"]
    provenance = gw.pool.provenance("good")
    assert provenance is not None and provenance.verification is Verification.VERIFIED
    assert gw.pool.revision("local/good") == address == provenance.address


async def test_a_folder_without_content_manifest_is_hashed_and_reported_unverified(
    root: Path, store_gateway: Callable[..., EmbeddedGateway]
) -> None:
    expected = hash_folder(root / "good").address
    (root / "good" / CONTENT_FILE).unlink()
    gw = store_gateway(root)
    await gw.embed(["x"], model="good")
    provenance = gw.pool.provenance("good")
    assert provenance is not None and provenance.verification is Verification.UNVERIFIED
    assert provenance.address == expected  # the address is exact even unverified: cache keys stay right
    assert not (root / "good" / CONTENT_FILE).exists()  # the daemon never writes into model folders

    strict = store_gateway(root, require_manifest=True)
    with pytest.raises(FailedPrecondition, match=r"has no content\.json and store\.require_manifest is true"):
        await strict.embed(["x"], model="good")


async def test_extra_missing_and_symlinked_files_are_refused(
    root: Path, store_gateway: Callable[..., EmbeddedGateway], tmp_path: Path
) -> None:
    (root / "good" / "notes.txt").write_text("smuggled")
    (root / "victim" / "tokenizer.json").rename(tmp_path / "tokenizer.json")
    gw = store_gateway(root)
    with pytest.raises(FailedPrecondition, match=r"notes\.txt is not listed in content\.json"):
        await gw.embed(["x"], model="good")
    with pytest.raises(FailedPrecondition, match=r"victim.*tokenizer\.json is missing"):
        await gw.embed(["x"], model="victim")

    (root / "good" / "notes.txt").unlink()
    (root / "victim" / "tokenizer.json").symlink_to(tmp_path / "tokenizer.json")
    with pytest.raises(FailedPrecondition, match=r"tokenizer\.json is a symlink.*store\.allow_symlinks"):
        await gw.embed(["x"], model="victim")
    relaxed = store_gateway(root, allow_symlinks=True)
    assert len((await relaxed.embed(["x"], model="victim")).vectors) == 1


@pytest.mark.parametrize("name", ["../good/model.onnx", "/etc/passwd", "sub/x", "model.sig"])
def test_content_manifest_names_are_plain_names_inside_the_folder(pristine: Path, name: str) -> None:
    data = json.loads((pristine / "good" / CONTENT_FILE).read_text())
    data["files"][0]["name"] = name
    with pytest.raises(ValueError, match="plain file name"):
        ContentManifest.parse(json.dumps(data).encode(), Path("content.json"))


def test_a_tampered_address_is_refused(pristine: Path) -> None:
    data = json.loads((pristine / "good" / CONTENT_FILE).read_text())
    data["address"] = "blake3:" + "0" * 64
    with pytest.raises(ValueError, match="address does not match its file list"):
        ContentManifest.parse(json.dumps(data).encode(), Path("content.json"))


async def test_the_tokenizer_alone_is_checked_too(root: Path, store_gateway: Callable[..., EmbeddedGateway]) -> None:
    _flip_one_byte(root / "victim" / "tokenizer.json")
    gw = store_gateway(root)
    with pytest.raises(FailedPrecondition, match=r"tokenizer\.json does not match content\.json"):
        await gw.count_tokens(["hello"], model="victim")
    assert (await gw.count_tokens(["hello"], model="good")) is not None


def test_list_models_and_loaded_models_carry_the_content_address_over_grpc(
    daemon: DaemonProcess, model_root: Path
) -> None:
    address = json.loads((model_root / MODEL / CONTENT_FILE).read_text())["address"]
    with daemon.client() as client:
        client.embed(["load it"], model=MODEL)
        listed = {m.info.id: m for m in client.list_models(local_only=True)}
        info = listed[f"local/{MODEL}"].info
        assert (info.revision, info.verification, info.signature, info.encrypted) == (
            address, "verified", "unsigned", False,
        )  # fmt: skip
        assert client.model_metadata(f"local/{MODEL}").info.revision == address
        loaded = {m.name: m for m in client.list_loaded_models()}
        assert (loaded[MODEL].revision, loaded[MODEL].verification) == (address, "verified")


async def test_verification_can_be_turned_off_and_says_so(
    root: Path, store_gateway: Callable[..., EmbeddedGateway]
) -> None:
    gw = store_gateway(root, verify=False)
    await gw.embed(["x"], model="good")
    provenance = gw.pool.provenance("good")
    assert provenance is not None and provenance.verification is Verification.SKIPPED
    assert provenance.address.startswith("stat:")  # sizes and times: a swap still changes the revision
    with pytest.raises(ConfigError, match=r"store\.require_signature = true needs store\.verify = true"):
        load_settings(store={"verify": False, "require_signature": True})
