"""Encryption at rest: ChaCha20-Poly1305 in chunked frames, keyed by a raw key file or Argon2id.

File layout (all integers big-endian)::

    magic        8  b"RTSKENC\\0"
    version      2  1
    aead         1  1 = ChaCha20-Poly1305
    kdf          1  0 = raw 32-byte key file, 1 = Argon2id passphrase
    t_cost       4  Argon2id passes            (0 for a key file)
    m_cost_kib   4  Argon2id memory in KiB     (0 for a key file)
    parallelism  4  Argon2id lanes             (0 for a key file)
    salt        32  Argon2id salt (random; unused for a key file)
    nonce_base  12  random per file
    frame_size   4  plaintext bytes per frame
    size         8  plaintext bytes in all
    frames       ceil(size / frame_size) (at least one) of ciphertext + 16-byte tag

Frame ``i`` is sealed with nonce ``nonce_base XOR i`` (in its last 8 bytes) and associated data
``header || i || last-flag``: frames cannot be reordered, dropped, swapped between files or cut
at a frame boundary without failing authentication, and the header (KDF parameters included)
cannot be edited. Files are read and written one frame at a time, so a large model is never held
twice; decryption writes into one buffer that becomes the bytes ONNX Runtime parses.

Anything unexpected fails closed with its own message naming the key source (never the key):
an unknown magic or version, a key of the wrong kind, a wrong key or passphrase (the first frame
fails), a corrupted frame, a truncated or extended file.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

MAGIC = b"RTSKENC\0"
VERSION = 1
AEAD_CHACHA20_POLY1305 = 1
KDF_RAW = 0
KDF_ARGON2ID = 1
KEY_BYTES = 32
TAG_BYTES = 16
FRAME_SIZE = 1 << 20
_HEADER = struct.Struct(">8sHBBIII32s12sIQ")
HEADER_BYTES = _HEADER.size


@dataclass(frozen=True, slots=True)
class Argon2Params:
    """RFC 9106's second recommended choice by default: 3 passes over 64 MiB, 4 lanes."""

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 4


class CryptError(ValueError):
    """A file that cannot be decrypted (or a key that cannot be used); the message says why."""


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where the key comes from, named in every message; the secret itself is never shown."""

    #: A raw 32-byte key file.
    key_file: Path | None = None
    passphrase: str | None = field(default=None, repr=False)
    #: e.g. "store.passphrase" or "models.NAME.passphrase", or "--passphrase-env VAR".
    passphrase_from: str = "the passphrase"

    def __post_init__(self) -> None:
        if (self.key_file is None) == (self.passphrase is None):
            raise ValueError("a key source is a key file or a passphrase")

    def describe(self) -> str:
        return f"key file {self.key_file}" if self.key_file is not None else self.passphrase_from

    def raw_key(self) -> bytes:
        assert self.key_file is not None
        try:
            data = self.key_file.read_bytes()
        except OSError as err:
            raise CryptError(f"cannot read key file {self.key_file}: {err.strerror}") from None
        if len(data) != KEY_BYTES:
            raise CryptError(f"key file {self.key_file} holds {len(data)} bytes; a key file is {KEY_BYTES} raw bytes")
        return data


def write_key_file(path: Path) -> None:
    """32 random bytes, created 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(KEY_BYTES))
    os.chmod(path, 0o600)


@dataclass(frozen=True, slots=True)
class _Header:
    kdf: int
    params: Argon2Params
    salt: bytes
    nonce_base: bytes
    frame_size: int
    size: int
    raw: bytes

    @property
    def frames(self) -> int:
        return max(1, -(-self.size // self.frame_size))

    def file_size(self) -> int:
        return HEADER_BYTES + self.size + self.frames * TAG_BYTES


def _derive(source: KeySource, kdf: int, params: Argon2Params, salt: bytes, file: str) -> bytes:
    if kdf == KDF_RAW:
        if source.key_file is None:
            raise CryptError(f"{file} was encrypted with a key file, but the key source is {source.describe()}")
        return source.raw_key()
    if source.passphrase is None:
        raise CryptError(
            f"{file} was encrypted with a passphrase (Argon2id), but the key source is {source.describe()}"
        )
    from argon2.low_level import Type, hash_secret_raw

    return hash_secret_raw(
        source.passphrase.encode(), salt, params.time_cost, params.memory_kib, params.parallelism, KEY_BYTES, Type.ID
    )


def _cipher(key: bytes) -> ChaCha20Poly1305:
    """The AEAD, imported with the first encrypted file: cryptography costs a daemon's start (which
    may hold no encrypted model) about 15 ms to import."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    return ChaCha20Poly1305(key)


def _nonce(base: bytes, index: int) -> bytes:
    tail = int.from_bytes(base[4:], "big") ^ index
    return base[:4] + tail.to_bytes(8, "big")


def _aad(header: bytes, index: int, last: bool) -> bytes:
    return header + struct.pack(">QB", index, 1 if last else 0)


def is_encrypted(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _read_header(f: BinaryIO, file: str, source: KeySource) -> _Header:
    raw = f.read(HEADER_BYTES)
    if len(raw) < len(MAGIC) or raw[: len(MAGIC)] != MAGIC:
        raise CryptError(f"{file} is not an encrypted model file")
    if len(raw) < HEADER_BYTES:
        raise CryptError(f"{file} is truncated: its header is {len(raw)} of {HEADER_BYTES} bytes")
    _, version, aead, kdf, t, m, p, salt, nonce, frame_size, size = _HEADER.unpack(raw)
    if version != VERSION:
        raise CryptError(
            f"{file} is in encrypted format version {version}, which this build cannot read (it reads version "
            f"{VERSION}); nothing was decrypted with {source.describe()}"
        )
    if aead != AEAD_CHACHA20_POLY1305 or kdf not in (KDF_RAW, KDF_ARGON2ID) or frame_size <= 0:
        raise CryptError(f"{file} has an unknown cipher ({aead}), key derivation ({kdf}) or frame size")
    params = Argon2Params(t, m, p)
    if kdf == KDF_ARGON2ID and (t < 1 or p < 1 or m < 8 * p):
        raise CryptError(f"{file} records invalid Argon2id parameters t={t} m={m} KiB p={p}")
    return _Header(kdf, params, salt, nonce, frame_size, size, raw)


def _frames(f: BinaryIO, header: _Header, file: str) -> Iterator[tuple[int, bool, bytes]]:
    for index in range(header.frames):
        last = index == header.frames - 1
        want = (header.size - index * header.frame_size if last else header.frame_size) + TAG_BYTES
        sealed = f.read(want)
        if len(sealed) < want:
            raise CryptError(
                f"{file} is truncated: frame {index} of {header.frames} is cut short "
                f"(the header promises {header.file_size()} bytes)"
            )
        yield index, last, sealed
    if f.read(1):
        raise CryptError(f"{file} has data after its last frame (the header promises {header.file_size()} bytes)")


def decrypt_stream(f: BinaryIO, source: KeySource, file: str) -> bytes:
    """The plaintext of an encrypted file, read frame by frame (blocking)."""
    from cryptography.exceptions import InvalidTag

    header = _read_header(f, file, source)
    cipher = _cipher(_derive(source, header.kdf, header.params, header.salt, file))
    out = io.BytesIO()
    for index, last, sealed in _frames(f, header, file):
        try:
            out.write(cipher.decrypt(_nonce(header.nonce_base, index), sealed, _aad(header.raw, index, last)))
        except InvalidTag:
            if index == 0:
                raise CryptError(
                    f"cannot decrypt {file} with {source.describe()}: wrong key or passphrase "
                    "(or the file's header was altered)"
                ) from None
            raise CryptError(f"{file} is corrupted: frame {index} fails authentication") from None
    # getvalue() hands over BytesIO's own buffer (no copy): the plaintext is held once.
    return out.getvalue()


def decrypt_file(path: Path, source: KeySource) -> bytes:
    try:
        with open(path, "rb") as f:
            return decrypt_stream(f, source, path.name)
    except OSError as err:
        raise CryptError(f"cannot read {path}: {err.strerror}") from None


def decrypt_bytes(data: bytes, source: KeySource, file: str) -> bytes:
    return decrypt_stream(io.BytesIO(data), source, file)


def encrypt_file(
    src: Path,
    dest: Path,
    source: KeySource,
    *,
    params: Argon2Params | None = None,
    frame_size: int = FRAME_SIZE,
    version: int = VERSION,
) -> None:
    """Write ``src`` encrypted to ``dest`` (atomically), one frame at a time (blocking).

    ``version`` exists for tests that prove unknown versions are refused; nothing else sets it.
    """
    kdf = KDF_RAW if source.key_file is not None else KDF_ARGON2ID
    argon = params or Argon2Params()
    recorded = Argon2Params(0, 0, 0) if kdf == KDF_RAW else argon
    salt = os.urandom(32)
    nonce_base = os.urandom(12)
    size = src.stat().st_size
    raw = _HEADER.pack(
        MAGIC, version, AEAD_CHACHA20_POLY1305, kdf, recorded.time_cost, recorded.memory_kib,
        recorded.parallelism, salt, nonce_base, frame_size, size,
    )  # fmt: skip
    cipher = _cipher(_derive(source, kdf, argon, salt, src.name))
    frames = max(1, -(-size // frame_size))
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            out.write(raw)
            for index in range(frames):
                chunk = f.read(frame_size)
                last = index == frames - 1
                out.write(cipher.encrypt(_nonce(nonce_base, index), chunk, _aad(raw, index, last)))
            if f.read(1):
                raise CryptError(f"{src} grew while it was being encrypted")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
