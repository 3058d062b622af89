"""What the store proved about a model folder, as operators and callers see it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Verification(StrEnum):
    #: Every covered file matched content.json.
    VERIFIED = "verified"
    #: No content.json: the files were hashed (the address is exact) but checked against nothing.
    UNVERIFIED = "unverified"
    #: store.verify = false: nothing was hashed.
    SKIPPED = "skipped"


class SignatureStatus(StrEnum):
    UNSIGNED = "unsigned"
    #: Signed by a trusted key, and every file matches what was signed.
    VALID = "valid"
    #: A valid envelope by a key not in store.trusted_keys (refused under require_signature).
    UNTRUSTED = "untrusted"
    #: Not checked (store.verify = false, or listing without hashing).
    UNCHECKED = "unchecked"


@dataclass(frozen=True, slots=True)
class SignatureState:
    status: SignatureStatus = SignatureStatus.UNSIGNED
    #: sha256 of the signer's public key (PEM SubjectPublicKeyInfo), as the bundle's key hint.
    key_id: str = ""
    #: "ecdsa-p256", "ed25519", ...
    algorithm: str = ""

    def describe(self) -> str:
        if self.status is SignatureStatus.UNSIGNED:
            return "unsigned"
        who = f" by {self.key_id[:16]}" if self.key_id else ""
        return f"{self.status.value}{who}" + (f" ({self.algorithm})" if self.algorithm else "")


@dataclass(frozen=True, slots=True)
class Provenance:
    #: The content address ``blake3:<hex>`` ("" when verification was skipped).
    address: str
    verification: Verification
    signature: SignatureState
    encrypted: bool = False
