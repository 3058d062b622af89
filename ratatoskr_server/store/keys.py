"""Signing keys: made, written (private ones 0600) and read for the trust list.

ECDSA P-256 is what the ``model_signing`` CLI signs and verifies with; Ed25519 (the reference
design's choice) is accepted by our signer and verifier in the same envelope, but that tool
refuses Ed25519 keys.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

KeyKind = Literal["ecdsa-p256", "ed25519"]
KEY_KINDS: tuple[KeyKind, ...] = ("ecdsa-p256", "ed25519")
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file."""


def _pem(public: PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public: PublicKey) -> str:
    """sha256 of the PEM public key: the ``hint`` the ``model_signing`` bundles carry."""
    return hashlib.sha256(_pem(public)).hexdigest()


def kind_of(key: PublicKey | PrivateKey) -> KeyKind:
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "ed25519"
    if key.curve.name == "secp256r1":
        return "ecdsa-p256"
    raise KeyFileError(f"unsupported curve {key.curve.name}; use ECDSA P-256 or Ed25519")


@dataclass(frozen=True, slots=True)
class TrustedKey:
    path: Path
    public: PublicKey
    kind: KeyKind
    id: str


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (never world-readable for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # the umask may have taken bits away; never added any


def generate_keypair(kind: KeyKind, private_path: Path, public_path: Path, password: str | None = None) -> str:
    """Write a new private key (0600) and its public key (0644); returns the key id."""
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} already exists; choose another name or remove it")
    private: PrivateKey = (
        ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else ec.generate_private_key(ec.SECP256R1())
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
    )
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    _write_new(private_path, pem, 0o600)
    _write_new(public_path, _pem(private.public_key()), 0o644)
    return key_id(private.public_key())


def load_private_key(path: Path, password: str | None = None) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password.encode() if password else None)
    except OSError as err:
        raise KeyFileError(f"cannot read private key {path}: {err.strerror}") from None
    except (ValueError, TypeError) as err:
        raise KeyFileError(f"{path} is not a usable PEM private key (wrong password?): {err}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"{path}: only ECDSA P-256 and Ed25519 keys can sign models")
    kind_of(key)
    return key


def load_public_key(path: Path) -> TrustedKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as err:
        raise KeyFileError(f"cannot read public key {path}: {err.strerror}") from None
    except ValueError as err:
        raise KeyFileError(f"{path} is not a PEM public key: {err}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise KeyFileError(f"{path}: only ECDSA P-256 and Ed25519 keys are supported")
    return TrustedKey(path=path, public=key, kind=kind_of(key), id=key_id(key))
