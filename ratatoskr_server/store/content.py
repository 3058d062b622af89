"""``content.json``: the per-file BLAKE3 manifest of a model folder and its content address.

The address is BLAKE3 over one line per file (``name NUL size NUL hex LF``, names sorted), so it
changes with any byte of any covered file, any file added or removed, and any rename — and it is
the same on every machine that holds the same files. It is the model's revision everywhere
(ListModels, metadata, response cache keys).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import blake3
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ratatoskr_server.store.files import CONTENT_FILE, STORE_NAMES, is_plain_name

ADDRESS_PREFIX = "blake3:"
CONTENT_FORMAT = "ratatoskr.content"
CONTENT_VERSION = 1


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    size: int = Field(ge=0)
    blake3: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("name")
    @classmethod
    def _plain(cls, value: str) -> str:
        if not is_plain_name(value) or value in STORE_NAMES:
            raise ValueError(f"{value!r} must be a plain file name inside the model's folder")
        return value


def content_address(entries: Iterable[FileEntry]) -> str:
    digest = blake3.blake3()
    for e in sorted(entries, key=lambda e: e.name):
        digest.update(f"{e.name}\0{e.size}\0{e.blake3}\n".encode())
    return ADDRESS_PREFIX + digest.hexdigest()


class ContentManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["ratatoskr.content"] = "ratatoskr.content"
    version: int = CONTENT_VERSION
    algorithm: Literal["blake3"] = "blake3"
    files: tuple[FileEntry, ...]
    address: str

    @model_validator(mode="after")
    def _consistent(self) -> ContentManifest:
        if self.version != CONTENT_VERSION:
            raise ValueError(f"content manifest version {self.version} is not supported (this build reads 1)")
        names = [e.name for e in self.files]
        if len(set(names)) != len(names):
            raise ValueError("a file is listed twice")
        if self.address != content_address(self.files):
            raise ValueError("its address does not match its file list")
        return self

    @classmethod
    def of(cls, entries: Iterable[FileEntry]) -> ContentManifest:
        files = tuple(sorted(entries, key=lambda e: e.name))
        return cls(files=files, address=content_address(files))

    def by_name(self) -> dict[str, FileEntry]:
        return {e.name: e for e in self.files}

    def to_json(self) -> bytes:
        return (json.dumps(self.model_dump(mode="json"), indent=2) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes, where: Path) -> ContentManifest:
        try:
            return cls.model_validate_json(data)
        except ValidationError as err:
            first = err.errors()[0]
            raise ValueError(f"{where} is not a valid content manifest: {first['msg']}") from None

    def write(self, folder: Path) -> Path:
        """Replace ``content.json`` atomically: a reader sees the old one or the new one."""
        fd, tmp = tempfile.mkstemp(prefix=f".{CONTENT_FILE}.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.to_json())
            os.chmod(tmp, 0o644)
            os.replace(tmp, folder / CONTENT_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return folder / CONTENT_FILE
