"""Encrypting and decrypting a model folder in place (``models encrypt | decrypt``).

The graph and the tokenizer are encrypted; ``manifest.json`` stays readable (it holds no weights,
and listing models needs it). ``content.json`` is rewritten over the new bytes. A signed model
must be signed again afterwards: its signature covers the bytes as they were.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ratatoskr_server.local.manifest import ModelManifest
from ratatoskr_server.store.content import ContentManifest
from ratatoskr_server.store.crypt import Argon2Params, KeySource, decrypt_file, encrypt_file, is_encrypted
from ratatoskr_server.store.files import SIGNATURE_FILE
from ratatoskr_server.store.store import hash_folder


def _targets(folder: Path) -> list[Path]:
    manifest = ModelManifest.read(folder)
    return [folder / manifest.onnx_file, folder / manifest.tokenizer_file]


def encrypt_model(folder: Path, source: KeySource, *, params: Argon2Params | None = None) -> ContentManifest:
    """Encrypt what is not encrypted yet; returns the new content manifest (written)."""
    for path in _targets(folder):
        if not is_encrypted(path):
            encrypt_file(path, path, source, params=params)
    return _rehash(folder)


def decrypt_model(folder: Path, source: KeySource) -> ContentManifest:
    """Write the plaintext back (the user asked for it on disk); returns the new content manifest."""
    for path in _targets(folder):
        if is_encrypted(path):
            plain = decrypt_file(path, source)  # checked whole before anything is replaced
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(plain)
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    return _rehash(folder)


def _rehash(folder: Path) -> ContentManifest:
    content = hash_folder(folder)
    content.write(folder)
    return content


def is_signed(folder: Path) -> bool:
    return (folder / SIGNATURE_FILE).exists()
