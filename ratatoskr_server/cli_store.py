"""``ratatoskr models keygen | hash | sign | verify | encrypt | decrypt``: the store from the command line.

Kept out of cli.py so the store's commands live together; cli.py registers them.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ratatoskr_server.config import Settings
    from ratatoskr_server.store.crypt import KeySource

EXIT_FAILURE = 1


def _out(data: dict[str, Any], as_json: bool, line: str) -> None:
    print(json.dumps(data, indent=2, default=str) if as_json else line)


def resolve_model(settings: Settings, model: str) -> tuple[str, Path]:
    """A model folder from a path or a model name (``local/`` prefix allowed)."""
    from ratatoskr_server.local.discovery import local_models

    path = Path(model).expanduser()
    if path.is_dir():
        return path.name, path
    name = model.removeprefix("local/")
    found = local_models(settings).get(name)
    if found is None or not found.is_dir():
        raise ValueError(f"{model!r} is neither a model folder nor a local model name; see `ratatoskr models list`")
    return name, found


def key_source(text: str) -> KeySource:
    """KEYSOURCE: ``env:VAR`` (a passphrase in that variable, through Argon2id), ``file:PATH`` or a
    PATH (a raw 32-byte key file). Never the passphrase itself: it would sit in the shell history."""
    from ratatoskr_server.store.crypt import KeySource

    if text.startswith("env:"):
        variable = text[4:]
        value = os.environ.get(variable, "")
        if not value:
            raise ValueError(f"{text}: the environment variable {variable} is unset or empty")
        return KeySource(passphrase=value, passphrase_from=f"the passphrase in ${variable}")
    return KeySource(key_file=Path(text.removeprefix("file:")).expanduser())


def _cmd_keygen(args: argparse.Namespace) -> int:
    from ratatoskr_server.store.crypt import write_key_file
    from ratatoskr_server.store.keys import generate_keypair

    if args.kind == "symmetric":
        path = Path(args.out).expanduser()
        if path.exists():
            raise FileExistsError(f"{path} already exists; choose another name or remove it")
        write_key_file(path)
        _out({"key_file": str(path), "kind": "symmetric"}, args.json, f"32-byte key file {path} (0600)")
        return 0
    private = Path(args.out).expanduser()
    public = private.with_name(private.name + ".pub") if not args.public else Path(args.public).expanduser()
    key = generate_keypair(args.kind, private, public)
    data = {"private_key": str(private), "public_key": str(public), "kind": args.kind, "key_id": key}
    _out(
        data,
        args.json,
        f"{args.kind} key {key[:16]}: private {private} (0600), public {public}; "
        "list the public key in store.trusted_keys",
    )
    return 0


def _cmd_hash(args: argparse.Namespace) -> int:
    from ratatoskr_server.config import load_settings
    from ratatoskr_server.store.store import hash_folder

    settings = load_settings(args.config)
    name, folder = resolve_model(settings, args.model)
    content = hash_folder(folder, allow_symlinks=settings.store.allow_symlinks)
    if args.write:
        content.write(folder)
    data = {"name": name, "path": str(folder), "address": content.address, "written": args.write}
    data["files"] = [e.model_dump() for e in content.files]
    _out(data, args.json, f"{name}: {content.address}" + ("" if args.write else " (content.json not written)"))
    return 0


def sign_model(folder: Path, key_path: Path, *, allow_symlinks: bool) -> tuple[str, str]:
    """Write content.json, then model.sig over it and every file: (address, key id)."""
    from ratatoskr_server.store.keys import load_private_key
    from ratatoskr_server.store.signature import sign_folder
    from ratatoskr_server.store.store import hash_folder

    key = load_private_key(key_path)
    content = hash_folder(folder, allow_symlinks=allow_symlinks)
    content.write(folder)
    return content.address, sign_folder(folder, key)


def _cmd_sign(args: argparse.Namespace) -> int:
    from ratatoskr_server.config import load_settings

    settings = load_settings(args.config)
    name, folder = resolve_model(settings, args.model)
    address, key_id = sign_model(folder, Path(args.key).expanduser(), allow_symlinks=settings.store.allow_symlinks)
    data = {"name": name, "path": str(folder), "address": address, "key_id": key_id}
    _out(data, args.json, f"signed {name} ({address}) with key {key_id[:16]} into {folder / 'model.sig'}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    """Everything the pool checks at load, without loading: exit 1 with the store's reason."""
    from ratatoskr_server.config import load_settings
    from ratatoskr_server.store.store import ModelStore

    overrides: dict[str, Any] = {}
    if args.key:
        overrides["store"] = {"trusted_keys": [Path(k).expanduser() for k in args.key], "require_signature": True}
    settings = load_settings(args.config, **overrides)
    name, folder = resolve_model(settings, args.model)
    files = ModelStore(settings).open_model(name, folder)
    p = files.provenance
    data = {
        "name": name,
        "path": str(folder),
        "address": p.address,
        "verification": p.verification.value,
        "signature": p.signature.status.value,
        "key_id": p.signature.key_id,
        "algorithm": p.signature.algorithm,
        "encrypted": p.encrypted,
    }
    _out(data, args.json, f"{name}: {p.address} {p.verification.value}, {p.signature.describe()}")
    return 0


def _seal(args: argparse.Namespace, *, encrypt: bool) -> int:
    from ratatoskr_server.config import load_settings
    from ratatoskr_server.store.sealing import decrypt_model, encrypt_model, is_signed

    settings = load_settings(args.config)
    name, folder = resolve_model(settings, args.model)
    if is_signed(folder) and not args.sign:
        raise ValueError(
            f"{folder} is signed and its signature covers the current bytes; pass --sign KEY to sign it again"
        )
    source = key_source(args.key)
    content = encrypt_model(folder, source) if encrypt else decrypt_model(folder, source)
    data: dict[str, Any] = {"name": name, "path": str(folder), "address": content.address, "encrypted": encrypt}
    if args.sign:
        data["signed_by"] = sign_model(folder, Path(args.sign).expanduser(), allow_symlinks=False)[1]
    done = "encrypted" if encrypt else "decrypted"
    _out(data, args.json, f"{done} {name} with {source.describe()}: {content.address}")
    return 0


def _cmd_encrypt(args: argparse.Namespace) -> int:
    return _seal(args, encrypt=True)


def _cmd_decrypt(args: argparse.Namespace) -> int:
    return _seal(args, encrypt=False)


def add_store_commands(models: Any, common: Any) -> None:
    """Register the store's subcommands on the ``models`` subparsers."""
    p = models.add_parser("keygen", help="a new signing key pair (private key written 0600)")
    common(p)
    p.add_argument("out", help="private key file to write; the public key goes to OUT.pub")
    p.add_argument(
        "--kind",
        choices=("ecdsa-p256", "ed25519", "symmetric"),
        default="ecdsa-p256",
        help="ecdsa-p256 (default; the model_signing CLI verifies it), ed25519 (verified by Ratatoskr only), "
        "or symmetric: a raw 32-byte key file for models encrypt",
    )
    p.add_argument("--public", help="public key file (default: OUT.pub)")
    p.set_defaults(func=_cmd_keygen)

    p = models.add_parser("hash", help="write content.json (per-file BLAKE3) and print the content address")
    common(p, config=True)
    p.add_argument("model", help="model folder or local model name")
    p.add_argument("--no-write", dest="write", action="store_false", help="print the address only")
    p.set_defaults(func=_cmd_hash)

    p = models.add_parser("sign", help="hash, then sign a model folder (OpenSSF Model Signing, model.sig)")
    common(p, config=True)
    p.add_argument("model", help="model folder or local model name")
    p.add_argument("--key", required=True, help="PEM private key (from `ratatoskr models keygen`)")
    p.set_defaults(func=_cmd_sign)

    p = models.add_parser("verify", help="check a model folder as the daemon does before loading it")
    common(p, config=True)
    p.add_argument("model", help="model folder or local model name")
    p.add_argument(
        "--key", action="append", help="trusted public key (repeatable); given: a valid signature is required"
    )
    p.set_defaults(func=_cmd_verify)

    for command, func, what in (
        ("encrypt", _cmd_encrypt, "encrypt the graph and tokenizer at rest (ChaCha20-Poly1305), in place"),
        ("decrypt", _cmd_decrypt, "write the plaintext graph and tokenizer back, in place"),
    ):
        p = models.add_parser(command, help=what)
        common(p, config=True)
        p.add_argument("model", help="model folder or local model name")
        p.add_argument(
            "--key", required=True, metavar="KEYSOURCE", help="env:VAR (passphrase, Argon2id) or [file:]PATH (32 bytes)"
        )
        p.add_argument("--sign", metavar="KEY", help="sign the model again with this PEM private key")
        p.set_defaults(func=func)


__all__ = ["add_store_commands", "key_source", "resolve_model", "sign_model"]
