"""Which files of a model folder the store covers, and the rule that keeps names inside it."""

from __future__ import annotations

import os
from pathlib import Path

from ratatoskr_client.errors import FailedPrecondition

CONTENT_FILE = "content.json"
SIGNATURE_FILE = "model.sig"
#: Left out of hashing and signing, as the ``model_signing`` CLI leaves them out by default.
GIT_NAMES = frozenset({".git", ".gitattributes", ".github", ".gitignore"})
#: The store's own files: not part of the content they describe.
STORE_NAMES = frozenset({CONTENT_FILE, SIGNATURE_FILE})


def is_plain_name(name: str) -> bool:
    """A name of a file directly inside the folder: no separators, no ``..``, nothing absolute."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def covered_files(folder: Path, *, model: str, allow_symlinks: bool) -> list[str]:
    """The names hashed and signed: every file in the folder but the store's own and git's.

    A symlink could point the runtime at bytes nobody hashed the next time it changes, so it is
    refused unless allowed (then followed, as ``model_signing --allow_symlinks`` does); a
    subfolder is refused because the serving manifest can only name files beside it.
    """
    names: list[str] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        raise FailedPrecondition(f"model '{model}': cannot list {folder}: {err.strerror}") from None
    for entry in entries:
        name = entry.name
        if name in STORE_NAMES or name in GIT_NAMES:
            continue
        if entry.is_symlink() and not allow_symlinks:
            raise FailedPrecondition(
                f"model '{model}': {folder / name} is a symlink; replace it with the file or set "
                "store.allow_symlinks = true"
            )
        if entry.is_dir():
            raise FailedPrecondition(
                f"model '{model}': {folder / name} is a folder; model folders hold plain files only"
            )
        if not entry.is_file():
            raise FailedPrecondition(f"model '{model}': {folder / name} is not a regular file")
        names.append(name)
    return names
