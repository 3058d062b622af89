"""``ratatoskr models keygen | import --sign | hash | sign | verify | list``, run as a user runs them."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ratatoskr_server.store.files import CONTENT_FILE, SIGNATURE_FILE
from tests.conftest import run_ratatoskr, toml_text
from tests.tiny_bert import make_tiny_bert_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert_checkpoint(tmp_path_factory.mktemp("ckpt"), seed=77)


def test_keygen_import_sign_verify_and_list(checkpoint: Path, tmp_path: Path) -> None:
    key = tmp_path / "keys" / "release.key"
    key.parent.mkdir()
    made = run_ratatoskr("models", "keygen", str(key), "--json")
    assert made.returncode == 0, made.stderr
    made_data = json.loads(made.stdout)
    public = Path(made_data["public_key"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and public == key.with_name("release.key.pub")
    again = run_ratatoskr("models", "keygen", str(key))
    assert again.returncode == 1 and again.stderr.startswith("ratatoskr: ") and "already exists" in again.stderr

    models = tmp_path / "models"
    imported = run_ratatoskr(
        "models", "import", str(checkpoint), "--name", "tiny", "--model-dir", str(models), "--sign", str(key), "--json"
    )
    assert imported.returncode == 0, imported.stderr
    folder = models / "tiny"
    assert (folder / CONTENT_FILE).is_file() and (folder / SIGNATURE_FILE).is_file()
    address = json.loads(imported.stdout)["address"]
    assert address == json.loads((folder / CONTENT_FILE).read_text())["address"]
    standard = subprocess.run(
        [sys.executable, "-m", "model_signing", "verify", "key", str(folder), "--signature",
         str(folder / SIGNATURE_FILE), "--public_key", str(public)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert standard.returncode == 0, standard.stderr

    config = tmp_path / "ratatoskr.toml"
    config.write_text(toml_text({"local": {"model_dir": models}, "store": {"trusted_keys": [str(public)]}}))
    verified = run_ratatoskr("models", "verify", str(folder), "--key", str(public), "--json", "--config", str(config))
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout) | {"path": ""} == {
        "name": "tiny", "path": "", "address": address, "verification": "verified", "signature": "valid",
        "key_id": made_data["key_id"], "algorithm": "ecdsa-p256", "encrypted": False,
    }  # fmt: skip
    listed = run_ratatoskr(
        "models", "list", "--json", "--no-remote", "--config", str(config), "--socket", "/nonexistent"
    )
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["address"] == address and row["signature"].startswith(f"signed by {made_data['key_id'][:16]}")
    assert "trusted key" in row["signature"] and row["encrypted"] is False

    # A change, then hashed again: content.json agrees, the signature does not.
    text = (folder / "tokenizer.json").read_text()
    (folder / "tokenizer.json").write_text(text.replace('"[UNK]"', '"[UNX]"', 1))
    refused = run_ratatoskr("models", "verify", "tiny", "--config", str(config))
    assert refused.returncode == 1
    assert refused.stderr.startswith("ratatoskr: FAILED_PRECONDITION: model 'tiny': tokenizer.json does not match")
    assert len(refused.stderr.strip().splitlines()) == 1
    rehashed = run_ratatoskr("models", "hash", "tiny", "--config", str(config), "--json")
    assert rehashed.returncode == 0 and json.loads(rehashed.stdout)["address"] != address
    changed = run_ratatoskr("models", "verify", "tiny", "--key", str(public), "--config", str(config))
    assert changed.returncode == 1 and "changed after signing: tokenizer.json was signed as sha256:" in changed.stderr
    resigned = run_ratatoskr("models", "sign", "tiny", "--key", str(key), "--config", str(config))
    assert resigned.returncode == 0, resigned.stderr
    assert run_ratatoskr("models", "verify", "tiny", "--key", str(public), "--config", str(config)).returncode == 0
