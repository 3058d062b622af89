"""What ``models list`` shows of a folder without hashing gigabytes.

The content address comes from ``content.json`` as recorded; a signature's envelope is checked
against the trust list (the files themselves are checked at load and by ``models verify``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from ratatoskr_server.store.content import ContentManifest
from ratatoskr_server.store.crypt import is_encrypted
from ratatoskr_server.store.files import CONTENT_FILE, SIGNATURE_FILE


@dataclass(frozen=True, slots=True)
class FolderSummary:
    #: The recorded content address; "" when the folder has no (valid) content.json.
    address: str
    #: "unsigned", "signed by <id> (trusted key <path>)", "signed by <id> (not a trusted key)", "invalid: ..."
    signature: str
    encrypted: bool


def recorded_address(folder: Path) -> str:
    """The address content.json records ("" without a valid one); one small read."""
    with contextlib.suppress(OSError, ValueError):  # no content.json, or one the store would refuse
        return ContentManifest.parse((folder / CONTENT_FILE).read_bytes(), folder / CONTENT_FILE).address
    return ""


def summarize(folder: Path, trusted_keys: list[Path], files: list[str]) -> FolderSummary:
    """Blocking (small reads and one signature check); ``files``: the graph and tokenizer names."""
    encrypted = any(is_encrypted(folder / f) for f in files)
    address = recorded_address(folder)
    return FolderSummary(address=address, signature=_signature(folder, trusted_keys), encrypted=encrypted)


def _signature(folder: Path, trusted_keys: list[Path]) -> str:
    path = folder / SIGNATURE_FILE
    if not path.exists():
        return "unsigned"
    # Heavy (cryptography, model-signing), so imported for a signed folder only.
    from ratatoskr_server.store.keys import KeyFileError, load_public_key
    from ratatoskr_server.store.signature import SignatureError, read_signature, signed_digests

    try:
        envelope = read_signature(path)
    except SignatureError as err:
        return f"invalid: {err}"
    for key_path in trusted_keys:
        try:
            key = load_public_key(key_path.expanduser())
        except KeyFileError:
            continue
        if envelope.key_id and key.id != envelope.key_id:
            continue
        try:
            signed_digests(envelope, key)
        except SignatureError as err:
            return f"invalid: {err}"
        return f"signed by {key.id[:16]} ({key.kind}, trusted key {key_path})"
    return f"signed by {envelope.key_id[:16] or 'an unnamed key'} (not a trusted key)"
