"""Model signatures in the OpenSSF Model Signing format, made and checked through ``model-signing``.

A signature is a Sigstore bundle (``model.sig`` in the model folder) holding a DSSE envelope over
an in-toto statement that lists every file's digest. We sign per-file SHA-256 digests and ignore
``model.sig`` and git's files, as the ``model_signing`` CLI does, so ``model_signing verify key
MODEL --signature MODEL/model.sig --public_key KEY.pub`` checks what we sign with an ECDSA P-256
key, and we check what it signs. At load the SHA-256 digests are computed in the same read as the
BLAKE3 ones.

Ed25519 keys sign the same envelope through our own signer/verifier pair; the ``model_signing``
tool refuses Ed25519 keys, so only Ratatoskr verifies those.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import exceptions
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from model_signing import hashing as ms_hashing
from model_signing._signing import sign_ec_key
from model_signing._signing import sign_sigstore_pb as sigstore_pb
from model_signing._signing import signing as ms_signing
from sigstore_models import intoto as intoto_pb
from sigstore_models.bundle import v1 as bundle_pb
from sigstore_models.common import v1 as common_pb

from ratatoskr_server.store.digest import ALGORITHMS
from ratatoskr_server.store.files import CONTENT_FILE, GIT_NAMES, SIGNATURE_FILE
from ratatoskr_server.store.keys import PrivateKey, TrustedKey, key_id, kind_of

#: Our signatures' per-file digests: SHA-256, because ``model_signing verify key`` hashes with it
#: whatever the signature says (a BLAKE3 signature verifies with us but not with that tool).
SIGNING_HASH: Literal["sha256"] = "sha256"


class SignatureError(ValueError):
    """A signature that cannot be read or does not verify; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A read ``model.sig``: the bundle, and what it claims before anything is verified."""

    signature: sigstore_pb.Signature
    key_id: str
    hash_type: str
    ignore_paths: frozenset[str]


def read_signature(path: Path) -> Envelope:
    try:
        signature = sigstore_pb.Signature.read(path)
        bundle = signature.bundle
        if bundle.dsse_envelope is None:
            raise ValueError("no DSSE envelope")
        statement = json.loads(bundle.dsse_envelope.payload)
        serialization = statement["predicate"]["serialization"]
    except OSError as err:
        raise SignatureError(f"cannot read {path}: {err.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise SignatureError(f"{path} is not a model signature bundle: {err}") from None
    method, hash_type = serialization.get("method"), serialization.get("hash_type")
    if method != "files" or hash_type not in ALGORITHMS:
        raise SignatureError(
            f"{path} uses {method!r} serialization with {hash_type!r} digests; only per-file "
            f"{' or '.join(ALGORITHMS)} signatures are supported: sign again without sharding"
        )
    hint = bundle.verification_material.public_key.hint if bundle.verification_material.public_key else ""
    ignored = frozenset(str(p).rstrip("/") for p in serialization.get("ignore_paths", ()))
    return Envelope(signature=signature, key_id=hint or "", hash_type=hash_type, ignore_paths=ignored)


# -- Ed25519 in the same envelope --------------------------------------------------------------
def _material(public: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey) -> bundle_pb.VerificationMaterial:
    return bundle_pb.VerificationMaterial(
        public_key=common_pb.PublicKeyIdentifier(hint=key_id(public)), tlog_entries=[]
    )


class _Ed25519Signer(sigstore_pb.Signer):
    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key

    def sign(self, payload: ms_signing.Payload) -> ms_signing.Signature:
        from google.protobuf import json_format

        raw = json_format.MessageToJson(payload.statement.pb).encode("utf-8")
        signature = intoto_pb.Signature(sig=base64.b64encode(self._key.sign(sigstore_pb.pae(raw))), keyid="")
        envelope = intoto_pb.Envelope(
            payload=base64.b64encode(raw), payload_type=ms_signing._IN_TOTO_JSON_PAYLOAD_TYPE, signatures=[signature]
        )
        return sigstore_pb.Signature(
            bundle_pb.Bundle(
                media_type="application/vnd.dev.sigstore.bundle.v0.3+json",
                verification_material=_material(self._key.public_key()),
                dsse_envelope=envelope,
            )
        )


class _Ed25519Verifier(sigstore_pb.Verifier):
    def __init__(self, key: ed25519.Ed25519PublicKey) -> None:
        self._key = key

    def _verify_bundle(self, bundle: bundle_pb.Bundle) -> tuple[str, bytes]:
        envelope = bundle.dsse_envelope
        if envelope is None:
            raise ValueError("the bundle has no DSSE envelope")
        self._key.verify(envelope.signatures[0].sig, sigstore_pb.pae(envelope.payload))
        return envelope.payload_type, envelope.payload


class _EcVerifier(sign_ec_key.Verifier):
    """model_signing's verifier, built from a loaded key rather than a path."""

    def __init__(self, key: ec.EllipticCurvePublicKey) -> None:
        sign_ec_key._check_supported_ec_key(key)
        self._public_key = key


class _EcSigner(sign_ec_key.Signer):
    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        sign_ec_key._check_supported_ec_key(key.public_key())
        self._private_key = key


# -- signing and checking ----------------------------------------------------------------------
def sign_folder(folder: Path, key: PrivateKey) -> str:
    """Write ``folder/model.sig`` over every file in it (blocking); returns the signer's key id."""
    kind_of(key)
    config = ms_hashing.Config()  # type: ignore[no-untyped-call]
    config.use_file_serialization(hashing_algorithm=SIGNING_HASH)
    manifest = config.set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=True).hash(folder)
    signer: sigstore_pb.Signer = _Ed25519Signer(key) if isinstance(key, ed25519.Ed25519PrivateKey) else _EcSigner(key)
    signer.sign(ms_signing.Payload(manifest)).write(folder / SIGNATURE_FILE)
    return key_id(key.public_key())


def signed_digests(envelope: Envelope, key: TrustedKey) -> dict[str, str]:
    """Check the envelope's signature with ``key``; the file -> hex digest list it vouches for."""
    verifier: sigstore_pb.Verifier = (
        _Ed25519Verifier(key.public) if isinstance(key.public, ed25519.Ed25519PublicKey) else _EcVerifier(key.public)
    )
    try:
        manifest = verifier.verify(envelope.signature)
    except (exceptions.InvalidSignature, ValueError, KeyError, IndexError) as err:
        raise SignatureError(
            f"{SIGNATURE_FILE} does not verify with trusted key {key.path} ({key.id[:16]}): "
            f"{err or 'bad signature'}; the signature or the statement it covers was altered"
        ) from None
    digests: dict[str, str] = {}
    for rd in manifest.resource_descriptors():
        digests[str(rd.identifier)] = rd.digest.digest_hex
    return digests


def compare_signed(
    model: str, signed: Mapping[str, str], actual: Mapping[str, str], hash_type: str, *, complete: bool
) -> None:
    """Raise SignatureError naming the first file that differs from what was signed."""
    for file, digest in actual.items():
        expected = signed.get(file)
        if expected is None:
            hint = "; write content.json before signing (`ratatoskr models sign` does)" if file == CONTENT_FILE else ""
            raise SignatureError(f"model '{model}' changed after signing: {file} was added after it was signed{hint}")
        if expected != digest:
            raise SignatureError(
                f"model '{model}' changed after signing: {file} was signed as {hash_type}:{expected} but is "
                f"now {hash_type}:{digest}; restore it or sign the model again"
            )
    if complete:
        missing = sorted(set(signed) - set(actual))
        if missing:
            raise SignatureError(f"model '{model}' changed after signing: {', '.join(missing)} removed")


def default_ignored(name: str, envelope: Envelope) -> bool:
    return name == SIGNATURE_FILE or name in GIT_NAMES or name in envelope.ignore_paths
