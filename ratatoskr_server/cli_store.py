"""``ratatoskr models keygen | sign | verify | hash``: the model store from the command line.

Kept out of cli.py so the store's commands live together; cli.py registers them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ratatoskr_server.config import Settings, load_settings

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


def _cmd_keygen(args: argparse.Namespace) -> int:
    from ratatoskr_server.store.keys import generate_keypair

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
    settings = load_settings(args.config)
    name, folder = resolve_model(settings, args.model)
    address, key_id = sign_model(folder, Path(args.key).expanduser(), allow_symlinks=settings.store.allow_symlinks)
    data = {"name": name, "path": str(folder), "address": address, "key_id": key_id}
    _out(data, args.json, f"signed {name} ({address}) with key {key_id[:16]} into {folder / 'model.sig'}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    """Everything the pool checks at load, without loading: exit 1 with the store's reason."""
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


def add_store_commands(models: Any, common: Any) -> None:
    """Register the store's subcommands on the ``models`` subparsers."""
    p = models.add_parser("keygen", help="a new signing key pair (private key written 0600)")
    common(p)
    p.add_argument("out", help="private key file to write; the public key goes to OUT.pub")
    p.add_argument(
        "--kind",
        choices=("ecdsa-p256", "ed25519"),
        default="ecdsa-p256",
        help="ecdsa-p256 (default; the model_signing CLI verifies it) or ed25519 (verified by Ratatoskr only)",
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


__all__ = ["add_store_commands", "resolve_model", "sign_model"]
