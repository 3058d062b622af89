"""``ratatoskr tree``'s output, kept until anything it was drawn from changes.

Why: building the tree needs the typed settings (pydantic and pydantic-settings: about half a
second to import and validate on a small machine) and drawing it needs rich (about 0.1 s), against
a goal of 100 ms for the whole command. What the command prints is a function of its inputs alone:
the configuration file and the files it leads to (secrets file, model folders and manifests), the
environment (``RATATOSKR_*`` and every ``${VAR}`` it may expand), the working directory, the
terminal, and the code. So the first run keeps what it printed under a digest of the inputs it can
name up front, with the signature (mtime, size, inode) of every file it read; a later run prints that
text only while the digest matches and every recorded file is as it was. A miss is an ordinary run.

Nothing secret is written: the environment enters only through the digest, and the kept text is
what the command printed (hosts, never URLs or keys). Files are 0600 in a 0700 directory under
``$XDG_CACHE_HOME/ratatoskr/tree``; a cache that cannot be written is skipped silently.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

#: Bumped when the entry's layout changes.
FORMAT = 1
#: Entries kept; the oldest are removed past this (one per terminal width, config, output form…).
KEEP = 16
#: Variables a shell changes between commands that cannot change the tree (the working directory
#: enters the digest on its own).
VOLATILE_ENV = frozenset({"_", "OLDPWD", "PWD", "SHLVL"})
#: Files modified this close to the build's start are not trusted to a signature (coarse timestamps).
RACY_NS = 2_000_000_000


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ratatoskr" / "tree"


def signature(path: Path) -> list[int]:
    """What says a file or folder changed: [] when it does not exist (its appearing is a change)."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    return [st.st_mtime_ns, st.st_size, st.st_ino]


def _code_signature() -> bytes:
    """Every module of this package and rich's entry point: an upgrade or an edit redraws."""
    digest = hashlib.blake2b(digest_size=20)
    package = Path(__file__).resolve().parent.parent
    for folder, dirs, files in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                digest.update(f"{path}{signature(Path(path))}".encode())
    spec = importlib.util.find_spec("rich")
    if spec is not None and spec.origin:
        digest.update(f"{spec.origin}{signature(Path(spec.origin))}".encode())
    return digest.digest()


def request_key(request: Sequence[str]) -> str:
    """The digest of everything known before the configuration is read: the request (its flags),
    the working directory, the environment, the terminal and the code."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(json.dumps([FORMAT, list(request), os.getcwd()]).encode())
    for name, value in sorted(os.environ.items()):
        if name not in VOLATILE_ENV:
            digest.update(f"\0{name}={value}".encode())
    streams = [stream.isatty() if stream is not None else False for stream in (sys.stdin, sys.stdout, sys.stderr)]
    digest.update(f"{streams}{tuple(shutil.get_terminal_size())}".encode())
    digest.update(_code_signature())
    return digest.hexdigest()


def lookup(key: str) -> str | None:
    """The kept text when every file it was drawn from is unchanged, else None."""
    try:
        entry = json.loads((cache_dir() / key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        return None
    inputs = entry.get("inputs")
    text = entry.get("text")
    if not isinstance(inputs, list) or not isinstance(text, str):
        return None
    for path, sig in inputs:
        if signature(Path(path)) != sig:
            return None
    return text


def store(key: str, text: str, inputs: Iterable[Path], started_ns: int) -> None:
    """Keep ``text`` with the signatures of ``inputs``, unless one of them was modified after the
    build began or less than a timestamp's granularity before (as git treats a "racily clean"
    file): its signature now might not describe what was read, and a stale hit is worse than a miss.
    ``started_ns`` is ``time.time_ns()`` taken before the configuration was read."""
    recorded: list[tuple[str, list[int]]] = [(str(p), signature(p)) for p in inputs]
    if any(sig and sig[0] >= started_ns - RACY_NS for _, sig in recorded):
        return
    import tempfile  # only on a miss: it costs a hit a few milliseconds to import

    folder = cache_dir()
    entry = {"format": FORMAT, "inputs": recorded, "text": text}
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(entry, out)
            os.replace(temp, folder / key)
        except BaseException:
            os.unlink(temp)
            raise
        _prune(folder)
    except OSError:
        return  # a read-only or full home: the tree is still printed, just not kept


def _prune(folder: Path) -> None:
    entries = sorted(
        (p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime_ns, reverse=True
    )
    for stale in entries[KEEP:]:
        stale.unlink(missing_ok=True)
