"""Model store cost against load time, on MiniLM (the default model): hashing throughput, and how
long a load takes without verification, verified (content.json), verified and signed, encrypted.

Run: ``.venv/bin/python bench/store.py [--model DIR] [--rounds N] [--json]``. The model is copied
to a temporary folder first (hashed, signed and encrypted there; yours is never touched). Files
are in the page cache after the first round, so these are warm-start figures; each is the fastest
of ``--rounds`` runs, the one least disturbed by other work on the machine. The target is
verification under 10% of load time. On a shared machine the figures are noisy: run it alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ratatoskr_server.config import Settings, load_settings
from ratatoskr_server.local.batcher import BatchLimits
from ratatoskr_server.local.discovery import find_default_model_source
from ratatoskr_server.local.importer import import_bert_checkpoint
from ratatoskr_server.local.model import open_local_model
from ratatoskr_server.store.crypt import KeySource, write_key_file
from ratatoskr_server.store.digest import BLAKE3, SHA256, hash_file
from ratatoskr_server.store.keys import generate_keypair, load_private_key
from ratatoskr_server.store.sealing import encrypt_model
from ratatoskr_server.store.signature import sign_folder
from ratatoskr_server.store.store import ModelStore, hash_folder

LIMITS = BatchLimits(max_batch_size=32, max_batch_tokens=16384, max_wait_ms=1.0, max_queue=64, max_queue_tokens=65536)


def _best_s(fn: Callable[[], object], rounds: int) -> float:
    """The fastest of ``rounds`` runs: the figure least disturbed by whatever else the machine runs."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def _load(settings: Settings, folder: Path, executor: ThreadPoolExecutor) -> tuple[float, float]:
    """(store seconds, whole load seconds): checking and decrypting, then the session and tokenizer."""
    started = time.perf_counter()
    files = ModelStore(settings).open_model(folder.name, folder)
    checked = time.perf_counter()
    open_local_model(
        folder.name, folder, files, device="cpu", require_device=False, intra_op_threads=1,
        executor=executor, limits=LIMITS,
    )  # fmt: skip
    return checked - started, time.perf_counter() - started


def _find_model(arg: str) -> Path:
    if arg:
        return Path(arg)
    local = load_settings().local
    folder = local.resolved_model_dir() / local.default_embed_model
    return folder if (folder / "manifest.json").is_file() else Path()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="", help="model folder (default: the configured default embed model)")
    parser.add_argument("--rounds", type=int, default=5, help="loads per figure; each figure is their median")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ratatoskr-bench-store-") as tmp:
        work = Path(tmp)
        source = _find_model(args.model)
        if source == Path():
            checkpoint = find_default_model_source()
            if checkpoint is None:
                raise SystemExit("no model: run `make model` or pass --model DIR")
            import_bert_checkpoint(checkpoint, work / "import", "all-minilm-l6-v2")
            source = work / "import" / "all-minilm-l6-v2"
        plain = work / "plain" / source.name
        shutil.copytree(source, plain)
        hash_folder(plain).write(plain)
        size_mb = sum(p.stat().st_size for p in plain.iterdir() if p.is_file()) / 2**20

        signed = work / "signed" / source.name
        shutil.copytree(plain, signed)
        generate_keypair("ecdsa-p256", work / "k", work / "k.pub")
        sign_folder(signed, load_private_key(work / "k"))

        sealed = work / "sealed" / source.name
        shutil.copytree(plain, sealed)
        write_key_file(work / "aead.key")
        encrypt_model(sealed, KeySource(key_file=work / "aead.key"))

        files = [p for p in plain.iterdir() if p.is_file()]

        def hash_all(algorithms: list[str]) -> None:
            for p in files:
                hash_file(p, algorithms)

        hash_all([BLAKE3])  # into the page cache
        blake3_s = _best_s(lambda: hash_all([BLAKE3]), args.rounds)
        both_s = _best_s(lambda: hash_all([BLAKE3, SHA256]), args.rounds)

        base: dict[str, Any] = {"local": {"model_dir": work}, "cache": {"enabled": False}}
        unverified = load_settings(**base, store={"verify": False})
        verified = load_settings(**base)
        trusting = load_settings(**base, store={"require_signature": True, "trusted_keys": [work / "k.pub"]})
        keyed = load_settings(**base, store={"key_file": work / "aead.key"})
        with ThreadPoolExecutor(1) as executor:
            figures: dict[str, float] = {}
            for label, settings, folder in (
                ("unverified", unverified, plain),
                ("verified", verified, plain),
                ("verified_signed", trusting, signed),
                ("verified_encrypted", keyed, sealed),
            ):
                _load(settings, folder, executor)  # warm
                runs = [_load(settings, folder, executor) for _ in range(args.rounds)]
                figures[f"store_{label}_ms"] = 1000 * min(r[0] for r in runs)
                figures[f"load_{label}_ms"] = 1000 * min(r[1] for r in runs)

    result = {
        "model": source.name,
        "size_mb": round(size_mb, 1),
        "blake3_mb_s": round(size_mb / blake3_s),
        "blake3_plus_sha256_mb_s": round(size_mb / both_s),
        **{k: round(v, 1) for k, v in figures.items()},
    }
    # The store's share of a load: its own time (hashing, signature, decryption) over the whole load.
    for label in ("verified", "verified_signed", "verified_encrypted"):
        result[f"{label}_store_share"] = round(figures[f"store_{label}_ms"] / figures[f"load_{label}_ms"], 3)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:<34} {value}")
        share = result["verified_store_share"]
        print(f"verification is {share:.1%} of a verified load (target < 10%)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
