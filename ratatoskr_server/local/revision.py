"""Which revision of a model folder is loaded: what the response cache keys local answers by.

The size and modification time (ns) of the manifest, the graph and the tokenizer: replacing any of
them (a swap, a re-import, a re-quantisation) changes the revision, so a swapped model never
answers with the old model's cached vectors.  Three ``stat`` calls, no hashing. Only the fallback when
``store.verify = false``: normally the store's content address (BLAKE3 over every file) is the revision.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ratatoskr_server.local.manifest import MANIFEST_FILE, ModelManifest


def model_revision(path: Path, manifest: ModelManifest) -> str:
    """A short digest of the files that decide the model's answers (blocking: run it in an executor)."""
    digest = hashlib.blake2b(digest_size=12)
    for name in (MANIFEST_FILE, manifest.onnx_file, manifest.tokenizer_file):
        stat = (path / name).stat()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()
