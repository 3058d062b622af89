"""The one door to model files: verify, then hand over bytes the runtime may parse.

Everything here blocks (file IO, hashing, decryption): the pool calls it in its loader executor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from ratatoskr_client.errors import FailedPrecondition
from ratatoskr_server.config import Settings
from ratatoskr_server.local.manifest import MANIFEST_FILE, ModelManifest
from ratatoskr_server.local.revision import model_revision
from ratatoskr_server.store.content import ContentManifest, FileEntry, content_address
from ratatoskr_server.store.crypt import MAGIC, CryptError, KeySource, decrypt_bytes, decrypt_file, is_encrypted
from ratatoskr_server.store.digest import BLAKE3, FileDigest, hash_bytes, hash_file
from ratatoskr_server.store.files import CONTENT_FILE, SIGNATURE_FILE, covered_files
from ratatoskr_server.store.provenance import Provenance, SignatureState, SignatureStatus, Verification


@dataclass(frozen=True, slots=True)
class StorePolicy:
    """The [store] settings as they apply to one model (per-model overrides folded in)."""

    verify: bool = True
    require_manifest: bool = False
    require_signature: bool = False
    trusted_keys: tuple[Path, ...] = ()
    allow_symlinks: bool = False
    #: How encrypted files are decrypted (None: no key configured).
    key: KeySource | None = None

    @classmethod
    def for_model(cls, settings: Settings, name: str) -> StorePolicy:
        store = settings.store
        decl = settings.models.get(name)
        required = decl.require_signature if decl and decl.require_signature is not None else store.require_signature
        key: KeySource | None = None
        if decl and (decl.key_file or decl.passphrase):
            key = _key_source(decl.key_file, decl.passphrase, f"models.{name}.passphrase")
        elif store.key_file or store.passphrase:
            key = _key_source(store.key_file, store.passphrase, "store.passphrase")
        return cls(
            key=key,
            verify=store.verify,
            require_manifest=store.require_manifest,
            require_signature=required,
            trusted_keys=tuple(p.expanduser() for p in store.trusted_keys),
            allow_symlinks=store.allow_symlinks,
        )


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """What the runtime gets: the parsed manifest, the graph and the tokenizer, all checked."""

    manifest: ModelManifest
    #: A path for plain graphs; the decrypted bytes for encrypted ones (never written to disk).
    graph: Path | bytes
    tokenizer_json: str
    provenance: Provenance


if TYPE_CHECKING:
    from ratatoskr_server.store.keys import TrustedKey
    from ratatoskr_server.store.signature import Envelope


def _key_source(key_file: Path | None, passphrase: SecretStr | None, where: str) -> KeySource:
    if key_file is not None:
        return KeySource(key_file=key_file.expanduser())
    assert passphrase is not None
    return KeySource(passphrase=passphrase.get_secret_value(), passphrase_from=where)


def _short(digest: str) -> str:
    return f"blake3:{digest}"


class ModelStore:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def update_settings(self, settings: Settings) -> None:
        self._settings = settings

    def policy(self, name: str) -> StorePolicy:
        return StorePolicy.for_model(self._settings, name)

    # -- the pool's two doors ----------------------------------------------------------------
    def open_model(self, name: str, folder: Path) -> ModelFiles:
        """Everything to build a session from, after every covered file was checked."""
        return self._open(name, folder, tokenizer_only=False)

    def open_tokenizer(self, name: str, folder: Path) -> ModelFiles:
        """The manifest and tokenizer alone (Tokenize, CountTokens before the model loads).

        With a content manifest only those two files (and content.json) are hashed, checked
        against it: the graph is checked when the model loads.
        """
        return self._open(name, folder, tokenizer_only=True)

    # -- verification ------------------------------------------------------------------------
    def _open(self, name: str, folder: Path, *, tokenizer_only: bool) -> ModelFiles:
        policy = self.policy(name)
        if not policy.verify:
            return self._open_unchecked(name, folder)
        names = covered_files(folder, model=name, allow_symlinks=policy.allow_symlinks)
        content_bytes = self._read_content(name, folder, policy)
        content = self._parse_content(name, folder, content_bytes)
        envelope = self._read_envelope(name, folder, policy)
        # A signature's own digest (SHA-256 from the model_signing CLI) is computed in the same read.
        algorithms = [BLAKE3] if envelope is None else [BLAKE3, envelope.hash_type]
        digests: dict[str, FileDigest] = {}
        if MANIFEST_FILE not in names:
            raise FailedPrecondition(f"model '{name}' at {folder}: {MANIFEST_FILE} is missing")
        digests[MANIFEST_FILE] = self._hash(name, folder, MANIFEST_FILE, algorithms, keep=True)
        if content is not None:  # checked before it is parsed, like every other file
            self._compare(name, folder, content, digests, complete=False)
        manifest = self._parse_manifest(name, folder, digests[MANIFEST_FILE])
        for file in (manifest.onnx_file, manifest.tokenizer_file):
            if file not in names:
                raise FailedPrecondition(f"model '{name}': {folder / file} is missing")
        # The tokenizer alone needs only its own file checked; a model needs every covered file.
        wanted = [manifest.tokenizer_file] if tokenizer_only else names
        for file in wanted:
            if file not in digests:
                digests[file] = self._hash(name, folder, file, algorithms, keep=file == manifest.tokenizer_file)
        if content is not None:
            self._compare(name, folder, content, digests, complete=not tokenizer_only)
            address = content.address
            verification = Verification.VERIFIED
        else:
            address = "" if tokenizer_only else content_address(self._entries(digests))
            verification = Verification.UNVERIFIED
        signature = SignatureState()
        if envelope is not None:
            signed_files = dict(digests)
            if content_bytes is not None:  # signed with the files: the very bytes parsed above
                signed_files[CONTENT_FILE] = hash_bytes(CONTENT_FILE, content_bytes, algorithms)
            signature = self._check_signature(name, policy, envelope, signed_files, complete=not tokenizer_only)
        tokenizer = digests.get(manifest.tokenizer_file)
        return self._readable(
            name,
            folder,
            manifest,
            tokenizer.data if tokenizer is not None else None,
            Provenance(address=address, verification=verification, signature=signature),
            policy,
            with_graph=not tokenizer_only,
        )

    def _readable(
        self,
        name: str,
        folder: Path,
        manifest: ModelManifest,
        tokenizer: bytes | None,
        provenance: Provenance,
        policy: StorePolicy,
        *,
        with_graph: bool,
    ) -> ModelFiles:
        """The files as the runtime reads them: encrypted ones decrypted in memory, never on disk."""
        if tokenizer is None:
            tokenizer = self._read(name, folder / manifest.tokenizer_file)
        graph: Path | bytes = folder / manifest.onnx_file
        graph_encrypted = with_graph and is_encrypted(folder / manifest.onnx_file)
        encrypted = tokenizer.startswith(MAGIC) or graph_encrypted
        if encrypted:
            key = policy.key
            if key is None:
                raise FailedPrecondition(
                    f"model '{name}' is encrypted but no key is configured: set store.key_file or "
                    f"store.passphrase (or models.{name}.key_file / passphrase)"
                )
            try:
                if tokenizer.startswith(MAGIC):
                    tokenizer = decrypt_bytes(tokenizer, key, manifest.tokenizer_file)
                if graph_encrypted:
                    graph = decrypt_file(folder / manifest.onnx_file, key)
            except CryptError as err:
                raise FailedPrecondition(f"model '{name}': {err}") from None
        try:
            text = tokenizer.decode("utf-8")
        except UnicodeDecodeError:
            raise FailedPrecondition(f"model '{name}': {manifest.tokenizer_file} is not UTF-8 text") from None
        return ModelFiles(
            manifest=manifest,
            graph=graph,
            tokenizer_json=text,
            provenance=dataclasses.replace(provenance, encrypted=encrypted),
        )

    @staticmethod
    def _read(name: str, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as err:
            raise FailedPrecondition(f"model '{name}': cannot read {path}: {err.strerror}") from None

    def _open_unchecked(self, name: str, folder: Path) -> ModelFiles:
        try:
            data = (folder / MANIFEST_FILE).read_bytes()
        except OSError as err:
            raise FailedPrecondition(f"model '{name}' at {folder}: unreadable {MANIFEST_FILE}: {err}") from None
        manifest = self._parse_manifest(name, folder, FileDigest(MANIFEST_FILE, len(data), {}, data))
        for file in (manifest.onnx_file, manifest.tokenizer_file):
            if not (folder / file).is_file():
                raise FailedPrecondition(f"model '{name}': {folder / file} is missing")
        revision = "stat:" + model_revision(folder, manifest)
        provenance = Provenance(
            address=revision, verification=Verification.SKIPPED, signature=SignatureState(SignatureStatus.UNCHECKED)
        )
        return self._readable(name, folder, manifest, None, provenance, self.policy(name), with_graph=True)

    @staticmethod
    def _hash(name: str, folder: Path, file: str, algorithms: list[str], *, keep: bool) -> FileDigest:
        try:
            return hash_file(folder / file, algorithms, keep=keep)
        except OSError as err:
            raise FailedPrecondition(f"model '{name}': cannot read {folder / file}: {err.strerror}") from None

    @staticmethod
    def _read_envelope(name: str, folder: Path, policy: StorePolicy) -> Envelope | None:
        path = folder / SIGNATURE_FILE
        if not path.exists():
            if policy.require_signature:
                raise FailedPrecondition(
                    f"model '{name}' is unsigned ({path} is missing) and a signature is required "
                    f"(store.require_signature or models.{name}.require_signature); sign it with "
                    f"`ratatoskr models sign {folder} --key KEY` using a key listed in store.trusted_keys"
                )
            return None
        # model-signing (and sigstore under it) costs about a second of imports: only signed models pay it.
        from ratatoskr_server.store.signature import SignatureError, read_signature

        try:
            return read_signature(path)
        except SignatureError as err:
            raise FailedPrecondition(f"model '{name}': {err}") from None

    @staticmethod
    def _trusted(policy: StorePolicy) -> list[TrustedKey]:
        # Imported for a trust list only: the key types cost a start without one about 15 ms.
        from ratatoskr_server.store.keys import KeyFileError, load_public_key

        try:
            return [load_public_key(path) for path in policy.trusted_keys]
        except KeyFileError as err:
            raise FailedPrecondition(f"store.trusted_keys: {err}") from None

    def _check_signature(
        self,
        name: str,
        policy: StorePolicy,
        envelope: Envelope,
        digests: dict[str, FileDigest],
        *,
        complete: bool,
    ) -> SignatureState:
        """A signature by a trusted key must match every file; one by another key is only reported
        (and refused when a signature is required): it cannot be checked without the key."""
        from ratatoskr_server.store.signature import SignatureError, compare_signed, default_ignored, signed_digests

        keys = self._trusted(policy)
        candidates = [k for k in keys if k.id == envelope.key_id] if envelope.key_id else keys
        if not candidates:
            if policy.require_signature:
                signer = f"key {envelope.key_id}" if envelope.key_id else "a key it does not name"
                raise FailedPrecondition(
                    f"model '{name}' is signed by {signer}, which is not in store.trusted_keys; add that "
                    "public key to the trust list or sign the model with a trusted key"
                )
            return SignatureState(SignatureStatus.UNTRUSTED, key_id=envelope.key_id)
        error: SignatureError | None = None
        for key in candidates:
            try:
                signed = signed_digests(envelope, key)
            except SignatureError as err:
                error = err
                continue
            actual = {
                file: d.digests[envelope.hash_type]
                for file, d in digests.items()
                if not default_ignored(file, envelope)
            }
            try:
                compare_signed(name, signed, actual, envelope.hash_type, complete=complete)
            except SignatureError as err:
                raise FailedPrecondition(str(err)) from None
            return SignatureState(SignatureStatus.VALID, key_id=key.id, algorithm=key.kind)
        raise FailedPrecondition(f"model '{name}': {error}")

    @staticmethod
    def _entries(digests: dict[str, FileDigest]) -> list[FileEntry]:
        return [FileEntry(name=d.name, size=d.size, blake3=d.digests[BLAKE3]) for d in digests.values()]

    @staticmethod
    def _parse_content(name: str, folder: Path, data: bytes | None) -> ContentManifest | None:
        if data is None:
            return None
        try:
            return ContentManifest.parse(data, folder / CONTENT_FILE)
        except ValueError as err:
            raise FailedPrecondition(f"model '{name}': {err}") from None

    @staticmethod
    def _read_content(name: str, folder: Path, policy: StorePolicy) -> bytes | None:
        path = folder / CONTENT_FILE
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if policy.require_manifest:
                raise FailedPrecondition(
                    f"model '{name}' at {folder} has no {CONTENT_FILE} and store.require_manifest is true; "
                    f"write one with `ratatoskr models hash {folder}`"
                ) from None
            return None
        except OSError as err:
            raise FailedPrecondition(f"model '{name}': cannot read {path}: {err.strerror}") from None

    @staticmethod
    def _compare(
        name: str, folder: Path, content: ContentManifest, digests: dict[str, FileDigest], *, complete: bool
    ) -> None:
        """Refuse on the first difference, naming the file and both digests."""
        listed = content.by_name()
        for file, got in digests.items():
            entry = listed.get(file)
            if entry is None:
                raise FailedPrecondition(
                    f"model '{name}': {folder / file} is not listed in {CONTENT_FILE}; remove it, or run "
                    f"`ratatoskr models hash {folder}` if it belongs to the model"
                )
            actual = got.digests[BLAKE3]
            if actual != entry.blake3 or got.size != entry.size:
                raise FailedPrecondition(
                    f"model '{name}': {file} does not match {CONTENT_FILE}: expected {_short(entry.blake3)} "
                    f"({entry.size} bytes), found {_short(actual)} ({got.size} bytes); the file changed since "
                    "it was hashed: restore it or re-import the model"
                )
        if complete:
            missing = sorted(set(listed) - set(digests))
            if missing:
                raise FailedPrecondition(
                    f"model '{name}': {', '.join(missing)} listed in {folder / CONTENT_FILE} "
                    f"{'is' if len(missing) == 1 else 'are'} missing"
                )

    @staticmethod
    def _parse_manifest(name: str, folder: Path, digest: FileDigest) -> ModelManifest:
        if digest.data is None:
            raise FailedPrecondition(f"model '{name}' at {folder}: {MANIFEST_FILE} is too large to be a manifest")
        try:
            return ModelManifest.model_validate_json(digest.data)
        except ValueError as err:
            raise FailedPrecondition(f"model '{name}' at {folder}: unreadable {MANIFEST_FILE}: {err}") from None


def hash_folder(folder: Path, *, allow_symlinks: bool = False) -> ContentManifest:
    """A fresh content manifest of ``folder`` (for ``models import`` and ``models hash``)."""
    names = covered_files(folder, model=folder.name, allow_symlinks=allow_symlinks)
    entries = []
    for file in names:
        d = hash_file(folder / file, [BLAKE3])
        entries.append(FileEntry(name=file, size=d.size, blake3=d.digests[BLAKE3]))
    return ContentManifest.of(entries)
