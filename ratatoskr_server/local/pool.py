"""Local models loaded once and shared within a memory budget.

Names resolve to ``[models.NAME]`` declarations, else to folders with a
manifest under ``local.model_dir``; the default MiniLM (and any model
declared with a ``source``) is imported on first use.

Residency rules:
- However many requests ask for an unloaded model at once, it loads exactly
  once; they wait for it (at most ``local.load_wait_s``) rather than fail.
- Loading a model that would take the pool past ``local.memory_budget_mb``
  first evicts the least recently used models that are ready, unpinned and
  idle.  Pinned models are never evicted; a model serving a request is never
  unloaded under it (an explicit unload waits for it to drain).
- Unpinned models idle for ``local.idle_unload_s`` are unloaded.

Footprint: the budget counts each model's *file footprint*, the size of its
folder on disk (weights dominate it, and ONNX Runtime holds one copy of the
initializers in memory).  It is known before loading, so admission decisions
are exact and reproducible.  The resident-set growth measured while the
session was created (from /proc/self/statm; it includes arena set-up and is
noisy under concurrent loads) is reported beside it as ``memory_mb``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from ratatoskr_client.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from ratatoskr_client.types import LoadedModel, SwapResult
from ratatoskr_server.config import DEFAULT_EMBED_MODEL, ModelSettings, Settings
from ratatoskr_server.local.batcher import BatchLimits
from ratatoskr_server.local.discovery import find_default_model_source, local_models
from ratatoskr_server.local.manifest import MANIFEST_FILE
from ratatoskr_server.local.model import LocalModel, build_tokenizer, open_local_model
from ratatoskr_server.local.tokenization import TextTokenizer
from ratatoskr_server.store.provenance import Provenance
from ratatoskr_server.store.store import ModelStore
from ratatoskr_server.telemetry.pool import PoolTelemetry

log = logging.getLogger(__name__)

LOCAL_PREFIX = "local/"
#: What a lease hears once the pool is closed: the daemon is draining and will not load anything.
CLOSED_MESSAGE = "the model pool is closed (the gateway is shutting down)"


class ModelState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"


@dataclass(frozen=True, slots=True)
class _LoadPlan:
    """What a model is built with; a loaded model keeps it until it is loaded again.

    Taken when the model is admitted, so a reload can say which of its settings the loaded
    model does not follow yet, rather than let the new values look applied.
    """

    limits: BatchLimits
    device: str
    require_device: bool
    intra_op_threads: int
    spin_wait: bool


@dataclass(eq=False)
class _Slot:
    name: str
    path: Path
    footprint_mb: float
    pinned: bool
    ready: asyncio.Future[None]
    gone: asyncio.Future[None]
    plan: _LoadPlan
    state: ModelState = ModelState.LOADING
    model: LocalModel | None = None
    memory_mb: float = 0.0
    in_flight: int = 0
    requests: int = 0
    #: On the pool's clock: when the last lease ended (or the load finished).
    last_used: float = 0.0
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    loader: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.drained.set()

    provenance: Provenance | None = None

    def describe(self, now: float) -> LoadedModel:
        model = self.model
        stored = self.provenance
        stats = model.batcher.stats if model else None
        return LoadedModel(
            name=self.name,
            task=model.task if model else None,
            state=self.state.value,
            device=model.handle.provider if model else "",
            memory_mb=round(self.memory_mb, 1),
            file_mb=round(self.footprint_mb, 1),
            pinned=self.pinned,
            requests=self.requests,
            idle_s=0.0 if self.in_flight else round(now - self.last_used, 3),
            in_flight=self.in_flight,
            revision=stored.address if stored else "",
            verification=stored.verification.value if stored else "",
            signature=stored.signature.status.value if stored else "",
            encrypted=stored.encrypted if stored else False,
            queued=model.batcher.queued_requests if model else 0,
            mean_batch_size=round(stats.rows_run / stats.runs, 2) if stats and stats.runs else 0.0,
            largest_batch=stats.largest_batch if stats else 0,
        )


def rss_mb() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file()) / 2**20


@dataclass(eq=False)
class _EarlyLoad:
    """A load ``begin_loading`` started ahead of any lease, until the first lease takes it."""

    task: asyncio.Task[None]
    #: Set when its first job is handed to a loader thread: what ``begin_loading`` waits for.
    working: asyncio.Event = field(default_factory=asyncio.Event)
    #: Its "model loaded" line, logged by the lease that takes its outcome.
    loaded: dict[str, Any] | None = None


def _told_later(task: asyncio.Task[None]) -> None:
    """An early load's outcome is told to the first lease of its name (``begin_loading``); marked
    seen here so that one nobody leased (a daemon that failed to bind) is not reported as lost."""
    if not task.cancelled():
        task.exception()


def _settled(future: asyncio.Future[None], error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
        future.exception()  # retrieved here: waiters re-raise it themselves


class LocalModelPool:
    def __init__(
        self,
        settings: Settings,
        executor: Executor,
        loader: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        store: ModelStore | None = None,
    ) -> None:
        self._settings = settings
        #: The only way model files are read: checked (and decrypted) before any byte is parsed.
        self._store = store or ModelStore(settings)
        #: Idle time is measured on this clock (seconds); the tests drive it by hand.
        self._clock = clock
        #: Inference (batches, big tokenizations) and loading (imports, sessions, tokenizer files) run
        #: on separate threads, so a slow import or load never leaves a ready model without a thread.
        self._executor = executor
        self._loader = loader or executor
        self._slots: dict[str, _Slot] = {}
        self._admission = asyncio.Lock()
        self._import_lock = asyncio.Lock()
        self._tokenizers: dict[str, TextTokenizer] = {}
        self._reaper: asyncio.Task[None] | None = None
        #: Unloads a reload started (update_settings cannot wait for them); close() waits for them.
        self._retiring: set[asyncio.Task[None]] = set()
        #: Set by close(): no lease is granted and no load is started or finished after it.
        self._closed = False
        #: Loads performed per model name, for the operators' status and the tests.
        self.load_counts: Counter[str] = Counter()
        #: Model name -> what the store proved of its files when last loaded (the content address
        #: is the revision the response cache keys by).
        self._provenance: dict[str, Provenance] = {}
        #: Metrics and spans of admissions, loads and batches (the gateway sets it; None: none).
        self.telemetry: PoolTelemetry | None = None
        #: A swap's new revision while it loads beside the old one (leased by nobody yet), and old
        #: revisions draining after a swap: both count against the budget until they are gone.
        self._incoming: dict[str, _Slot] = {}
        self._outgoing: set[_Slot] = set()
        #: One swap at a time per pool: a second waits rather than racing the first's decisions.
        self._swap_lock = asyncio.Lock()
        #: Requests waiting for a model to load (or for its old revision to go) per name.
        self._waiting: Counter[str] = Counter()
        #: Loads started ahead of any lease (``begin_loading``), by name: the first lease of a name
        #: takes its outcome, so a failed early load is reported once, where a lease reports it.
        self._early: dict[str, _EarlyLoad] = {}

    # -- configuration and names -----------------------------------------------------------
    def update_settings(self, settings: Settings) -> list[str]:
        """Take a reloaded configuration; what loaded models will follow only when loaded again.

        Pinning applies to loaded models now, and a lowered ``local.memory_budget_mb`` evicts idle
        unpinned models (least recently used first) until the pool fits it. What a model is built
        with (batching limits, device, threads, its folder) cannot change under a running session:
        the returned notes (``settings_awaiting_reload``) say so, so the reload reports it instead
        of appearing to have applied it.
        """
        self._settings = settings
        self._store.update_settings(settings)
        self._tokenizers.clear()
        self._restart_reaper()
        for slot in self._slots.values():
            decl = self._decl(slot.name)
            slot.pinned = bool(decl and decl.pinned)
        self._fit_budget()
        notes = self.settings_awaiting_reload()
        if notes:
            log.warning("loaded models follow some settings only when loaded again", extra={"notes": notes})
        return notes

    def settings_awaiting_reload(self) -> list[str]:
        """Configured values the loaded (or loading) models do not follow yet, in words; [] when they do."""
        available = self.available() if self._slots else {}
        notes = [n for s in self._slots.values() for n in self._changes_at_next_load(s, available.get(s.name))]
        return notes + self._over_budget()

    def _changes_at_next_load(self, slot: _Slot, path: Path | None) -> list[str]:
        """How the settings for ``slot``'s model differ from what it was loaded with."""
        name = slot.name
        decl = self._decl(name)

        def key(setting: str, section: str) -> str:
            """Where the value now comes from: the model's declaration, else the section."""
            overridden = decl is not None and getattr(decl, setting, None) is not None
            return f"models.{name}.{setting}" if overridden else f"{section}.{setting}"

        was, now = slot.plan, self._plan(name)
        changed: list[tuple[str, object, object]] = [
            (key(f.name, "local.batching"), getattr(was.limits, f.name), getattr(now.limits, f.name))
            for f in fields(BatchLimits)
        ]
        changed += [
            (key("device", "local"), was.device, now.device),
            ("local.require_device", was.require_device, now.require_device),
            ("local.intra_op_threads", was.intra_op_threads, now.intra_op_threads),
            ("local.spin_wait", was.spin_wait, now.spin_wait),
        ]
        if path is not None:
            changed.append((key("path", "local.model_dir"), str(slot.path), str(path)))
        notes = [
            f"{setting} = {new!r} applies to '{name}' when it is next loaded (it runs with {old!r} until then)"
            for setting, old, new in changed
            if old != new
        ]
        if path is None:
            notes.append(
                f"'{name}' is no longer declared or found in local.model_dir; it stays loaded until it is unloaded"
            )
        return notes

    def _fit_budget(self) -> None:
        """Evict idle unpinned models, least recently used first, until the pool fits the budget."""
        budget = self._settings.local.memory_budget_mb
        while budget and self.used_mb() > budget and (idle := self._evictable()):
            victim = min(idle, key=lambda s: s.last_used)
            log.info("evicting least recently used model", extra={"model": victim.name, "for": "a lowered budget"})
            self._retire(victim)

    def _over_budget(self) -> list[str]:
        """The models holding the pool over its budget when none of them can be evicted now."""
        budget = self._settings.local.memory_budget_mb
        if not budget or self.used_mb() <= budget:
            return []

        def why(s: _Slot) -> str:
            if s.pinned:
                return "pinned"
            if s.state is not ModelState.READY:
                return s.state.value
            return f"{s.in_flight} in flight" if s.in_flight else "idle"

        held = ", ".join(f"'{s.name}' {s.footprint_mb:.1f} MB {why(s)}" for s in self._slots.values())
        return [
            f"local.memory_budget_mb = {budget:g} is below the {self.used_mb():.1f} MB the loaded models hold "
            f"({held}); pinned and busy models stay loaded, and other models load only as room frees up"
        ]

    @staticmethod
    def canonical(name: str) -> str:
        return name[len(LOCAL_PREFIX) :] if name.startswith(LOCAL_PREFIX) else name

    def _decl(self, name: str) -> ModelSettings | None:
        return self._settings.models.get(name)

    def revision(self, name: str) -> str:
        """The revision of ``name``'s files as last loaded ("" before its first load): kept after an
        unload, replaced by the next load, so what it names is what the pool last served."""
        known = self._provenance.get(self.canonical(name))
        return known.address if known else ""

    def provenance(self, name: str) -> Provenance | None:
        """What the store proved of ``name``'s files when it was last loaded (None before)."""
        return self._provenance.get(self.canonical(name))

    def available(self) -> dict[str, Path]:
        return local_models(self._settings)

    async def locate(self, name: str) -> Path:
        """The model's folder, importing it first when it has a source and is not there yet."""
        name = self.canonical(name)
        path = self.available().get(name)
        if path is not None and (path / MANIFEST_FILE).is_file():
            return path
        decl = self._decl(name)
        local = self._settings.local
        source: Path | None = None
        if decl and decl.source:
            source = decl.source.expanduser()
        elif name == DEFAULT_EMBED_MODEL and local.auto_import_default:
            # Only under its own name: a typo'd default_embed_model must not become a second copy.
            source = find_default_model_source()
        if source is not None:
            return await self._import(name, source, path or local.resolved_model_dir() / name)
        known = ", ".join(sorted(self.available())) or "none"
        if path is not None:
            raise FailedPrecondition(
                f"model '{name}' is declared at {path} but that folder has no {MANIFEST_FILE}; "
                f"import it with `ratatoskr models import SOURCE --name {name}` or give it a source"
            )
        raise NotFound(f"unknown model '{name}'; local models available: {known}")

    async def _import(self, name: str, source: Path, target: Path) -> Path:
        async with self._import_lock:
            if not (target / MANIFEST_FILE).is_file():
                log.info("importing model", extra={"model": name, "source": str(source)})
                target.parent.mkdir(parents=True, exist_ok=True)
                loop = asyncio.get_running_loop()
                try:
                    # onnx (the importer's) loads only when a model must be imported: a third of a cold start.
                    from ratatoskr_server.local.importer import import_bert_checkpoint

                    self._working(name)
                    await loop.run_in_executor(self._loader, import_bert_checkpoint, source, target.parent, name)
                except FileExistsError:
                    pass  # another process imported it first
                except ValueError as err:
                    raise FailedPrecondition(f"model '{name}' cannot be imported from {source}: {err}") from None
            return target

    async def tokenizer(self, name: str) -> TextTokenizer:
        """The model's tokenizer alone, without loading its weights (Tokenize, CountTokens)."""
        name = self.canonical(name)
        slot = self._slots.get(name)
        if slot is not None and slot.model is not None:
            return slot.model.tokenizer
        cached = self._tokenizers.get(name)
        if cached is None:
            path = await self.locate(name)

            def build() -> TextTokenizer:  # file IO, hashing and parsing a tokenizer.json: off the event loop
                return build_tokenizer(name, self._store.open_tokenizer(name, path))

            cached = await asyncio.get_running_loop().run_in_executor(self._loader, build)
            self._tokenizers[name] = cached
        return cached

    # -- leasing -----------------------------------------------------------------------------
    async def begin_loading(self, names: Sequence[str]) -> None:
        """Start loading ``names``, and return once each load is working on a loader thread (an
        import or the session build) or has ended: not when the models are ready.

        The daemon calls this before it imports its fronts, providers and stages, so ONNX Runtime
        builds the sessions (it releases the GIL) beside those imports instead of after them. The
        first lease of each name waits for its load and hears its failure, if it failed."""
        loop = asyncio.get_running_loop()
        started: list[_EarlyLoad] = []
        for name in names:
            key = self.canonical(name)
            if key not in self._early:
                early = self._early[key] = _EarlyLoad(loop.create_task(self._load_ahead(key), name=f"preload:{key}"))
                early.task.add_done_callback(_told_later)
                started.append(early)
        for early in started:
            signal = loop.create_task(early.working.wait())
            await asyncio.wait({early.task, signal}, return_when=asyncio.FIRST_COMPLETED)
            signal.cancel()

    def _working(self, name: str) -> None:
        """An early load's first job is on its way to a loader thread (``begin_loading`` waits for it)."""
        if (early := self._early.get(name)) is not None:
            early.working.set()

    @asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[LocalModel]:
        """Borrow a loaded model for one request; it cannot be unloaded until the block ends."""
        early = self._early.pop(self.canonical(name), None) if self._early else None
        if early is not None:
            await early.task  # an early load's failure is this lease's
            if early.loaded is not None:
                log.info("model loaded", extra=early.loaded)
        if self.telemetry is None:
            slot = await self._acquire(self.canonical(name))
        else:
            with self.telemetry.admission(self.canonical(name)):
                slot = await self._acquire(self.canonical(name))
        assert slot.model is not None
        try:
            yield slot.model
        finally:
            self._let_go(slot)

    def _let_go(self, slot: _Slot) -> None:
        slot.in_flight -= 1
        slot.last_used = self._clock()
        if slot.in_flight == 0:
            slot.drained.set()

    async def _load_ahead(self, name: str) -> None:
        """``begin_loading``'s work: the model loaded and let go at once (not a request: no admission
        metrics), as a lease would, but without looking for an early load (it is one)."""
        self._let_go(await self._acquire(name))

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable(CLOSED_MESSAGE)

    async def _acquire(self, name: str) -> _Slot:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._settings.local.load_wait_s
        while True:
            self._check_open()  # again after every wait: close() may have come meanwhile
            slot = self._slots.get(name) or await self._admit(name)
            if slot.state is ModelState.READY:
                slot.in_flight += 1
                slot.requests += 1
                slot.drained.clear()
                return slot
            waiter = slot.ready if slot.state is ModelState.LOADING else slot.gone
            self._waiting[name] += 1
            try:
                # timeout_at, not wait_for: on 3.11 wait_for can swallow a cancel that lands just as
                # the waiter completes, leaving the caller running after it was cancelled.
                async with asyncio.timeout_at(give_up):
                    await asyncio.shield(waiter)
            except TimeoutError:
                raise Unavailable(
                    f"model '{name}' is still {slot.state.value} after {self._settings.local.load_wait_s:g}s "
                    "(local.load_wait_s); retry shortly"
                ) from None
            finally:
                self._waiting[name] -= 1
                if not self._waiting[name]:
                    del self._waiting[name]

    async def _admit(self, name: str) -> _Slot:
        """Reserve budget and start loading ``name``; only one caller per name gets this far.

        The admission lock covers only decisions: a first-use import happens before it, and waiting
        for a busy model to drain happens outside it, so one slow model never holds back the others.
        """
        path = await self.locate(name)  # may import (under its own lock)
        footprint = dir_mb(path)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._settings.local.load_wait_s
        while True:
            async with self._admission:
                self._check_open()  # the import above, or the wait for a drain below, may outlast close()
                existing = self._slots.get(name)
                if existing is not None:
                    return existing
                busy = await self._make_room(name, footprint, give_up - loop.time())
                if not busy:
                    slot = self._new_slot(name, path, footprint)
                    self._slots[name] = slot
                    slot.loader = loop.create_task(self._load(slot), name=f"load:{name}")
                    return slot
            # Every evictable model is serving someone: wait (unlocked) for the first to drain.
            waits = [asyncio.ensure_future(s.drained.wait()) for s in busy]
            try:
                await asyncio.wait(waits, timeout=max(give_up - loop.time(), 0), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    def used_mb(self) -> float:
        """The footprint held against the budget: models serving, and those a swap holds beside them
        (a new revision loading, an old one draining) until they are unloaded."""
        held = [*self._slots.values(), *self._incoming.values(), *self._outgoing]
        return sum(s.footprint_mb for s in held)

    def _evictable(self) -> list[_Slot]:
        return [s for s in self._slots.values() if s.state is ModelState.READY and not s.pinned and s.in_flight == 0]

    async def _make_room(self, name: str, need: float, remaining: float) -> list[_Slot]:
        """Evict idle models until ``need`` fits; the busy models to wait for when that is not enough."""
        budget = self._settings.local.memory_budget_mb
        if not budget:
            return []
        if need > budget:
            raise FailedPrecondition(
                f"model '{name}' needs {need:.1f} MB, more than the whole budget of {budget:g} MB "
                "(local.memory_budget_mb)"
            )
        while self.used_mb() + need > budget:
            idle = self._evictable()
            if idle:
                victim = min(idle, key=lambda s: s.last_used)
                log.info("evicting least recently used model", extra={"model": victim.name, "for": name})
                await self._remove(victim)
                continue
            busy = [s for s in self._slots.values() if not s.pinned and s.state is not ModelState.LOADING]
            if not busy or remaining <= 0:
                held = ", ".join(f"{s.name} {s.footprint_mb:.1f} MB" for s in self._slots.values()) or "nothing"
                raise ResourceExhausted(
                    f"cannot load model '{name}' ({need:.1f} MB): the budget of {budget:g} MB "
                    f"(local.memory_budget_mb) is held by pinned, loading or busy models ({held}); "
                    "retry later, unload a model or raise the budget",
                    retry_after_s=1.0,
                )
            return busy
        return []

    def _plan(self, name: str) -> _LoadPlan:
        local = self._settings.local
        decl = self._decl(name)
        return _LoadPlan(
            limits=self.batch_limits(decl),
            device=(decl.device if decl and decl.device else None) or local.device,
            require_device=local.require_device,
            intra_op_threads=local.resolved_intra_op_threads(),
            spin_wait=local.spin_wait,
        )

    async def _load(self, slot: _Slot) -> None:
        telemetry = self.telemetry
        if telemetry is None:
            await self._open(slot)
            return
        started = time.perf_counter()
        with telemetry.load(slot.name, slot.plan.device):
            await self._open(slot)
        if slot.state is ModelState.READY:
            telemetry.loaded(slot.name, time.perf_counter() - started)
        self._report()

    def _holds(self, slot: _Slot) -> bool:
        """Whether ``slot`` is still wanted: serving its name, or loading beside it for a swap."""
        return self._slots.get(slot.name) is slot or self._incoming.get(slot.name) is slot

    def _report(self) -> None:
        if self.telemetry is not None:
            ready = sum(1 for s in self._slots.values() if s.state is ModelState.READY)
            self.telemetry.held(ready, self.used_mb(), self._settings.local.memory_budget_mb)

    async def _open(self, slot: _Slot) -> None:
        plan = slot.plan
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        before = rss_mb()
        try:
            # Checked first, in the same executor job: ONNX Runtime and the tokenizer parse only what
            # the store verified (and decrypted in memory).
            self._working(slot.name)
            model = await loop.run_in_executor(
                self._loader,
                lambda: open_local_model(
                    slot.name,
                    slot.path,
                    self._store.open_model(slot.name, slot.path),
                    device=plan.device,
                    require_device=plan.require_device,
                    intra_op_threads=plan.intra_op_threads,
                    spin_wait=plan.spin_wait,
                    executor=self._executor,
                    limits=plan.limits,
                ),
            )
            if not self._holds(slot):
                # The slot left the pool while the session was being built (close() discards loads
                # in progress, and cancels this task too, so this is a backstop): a model nobody can
                # lease must not start a batcher.
                _settled(slot.ready, Unavailable(f"model '{slot.name}' was discarded while it loaded"))
                _settled(slot.gone)
                return
            decl = self._decl(slot.name)
            if decl and decl.task and decl.task != model.manifest.task:
                raise FailedPrecondition(
                    f"model '{slot.name}' is declared as task {decl.task!r} but its manifest says "
                    f"{model.manifest.task!r}"
                )
        except BaseException as err:
            if self._slots.get(slot.name) is slot:
                del self._slots[slot.name]
            if self._incoming.get(slot.name) is slot:
                del self._incoming[slot.name]
            _settled(slot.ready, err)
            _settled(slot.gone)
            if not isinstance(err, Exception):
                raise
            return
        slot.memory_mb = max(rss_mb() - before, 0.0)
        slot.model = model
        model.batcher.telemetry = self.telemetry
        model.batcher.start()
        slot.state = ModelState.READY
        slot.last_used = self._clock()
        self.load_counts[slot.name] += 1
        assert model.provenance is not None
        slot.provenance = model.provenance
        self._provenance[slot.name] = model.provenance
        _settled(slot.ready)
        loaded = {
            "model": slot.name,
            "device": model.handle.provider,
            "load_ms": round((time.perf_counter() - started) * 1000, 1),
            "footprint_mb": round(slot.footprint_mb, 1),
            "memory_mb": round(slot.memory_mb, 1),
            "revision": model.provenance.address,
            "verification": model.provenance.verification.value,
            "signature": model.provenance.signature.describe(),
            "encrypted": model.provenance.encrypted,
        }
        if (early := self._early.get(slot.name)) is not None:
            # Told by the first lease (begin_loading): a daemon that fails to start says only why.
            early.loaded = loaded
        else:
            log.info("model loaded", extra=loaded)

    def batch_limits(self, decl: ModelSettings | None) -> BatchLimits:
        b = self._settings.local.batching
        return BatchLimits(
            max_batch_size=(decl.max_batch_size if decl else None) or b.max_batch_size,
            max_batch_tokens=(decl.max_batch_tokens if decl else None) or b.max_batch_tokens,
            max_wait_ms=b.max_wait_ms if decl is None or decl.max_wait_ms is None else decl.max_wait_ms,
            max_queue=(decl.max_queue if decl else None) or b.max_queue,
            max_queue_tokens=(decl.max_queue_tokens if decl else None) or b.max_queue_tokens,
            concurrency=b.concurrency,
        )

    # -- unloading ---------------------------------------------------------------------------
    async def _remove(self, slot: _Slot) -> None:
        """Drop a slot whose requests have drained; its session goes with the last reference."""
        self._detach(slot)
        await self._release(slot)

    def _detach(self, slot: _Slot) -> None:
        slot.state = ModelState.UNLOADING
        if self._slots.get(slot.name) is slot:
            del self._slots[slot.name]
        self._report()

    def _retire(self, slot: _Slot) -> None:
        """_remove for synchronous callers: out of the pool (and the budget) now, stopped in the background."""
        self._detach(slot)
        task = asyncio.get_running_loop().create_task(self._release(slot), name=f"unload:{slot.name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _release(self, slot: _Slot) -> None:
        try:
            if slot.model is not None:
                await slot.model.batcher.stop()
        finally:  # also when the remover (the reaper, at close) is cancelled: nobody waits on `gone` forever
            slot.model = None
            _settled(slot.gone)
        log.info("model unloaded", extra={"model": slot.name})

    async def unload(self, name: str) -> bool:
        """Unload now, or as soon as its in-flight requests finish; False if it was not loaded."""
        name = self.canonical(name)
        slot = self._slots.get(name)
        if slot is None:
            if name not in self.available():
                raise NotFound(f"unknown model '{name}'")
            return False
        if slot.state is ModelState.LOADING:
            await asyncio.shield(slot.ready)
        if slot.state is ModelState.UNLOADING:
            await asyncio.shield(slot.gone)
            return True
        slot.state = ModelState.UNLOADING  # new requests now wait for it to go, then reload it
        await slot.drained.wait()
        await self._remove(slot)
        return True

    # -- swapping revisions -------------------------------------------------------------------
    async def swap(self, name: str) -> SwapResult:
        """Serve ``name``'s files as they are on disk now, without failing a call.

        The store checks the new files before anything changes: broken ones are refused
        (FailedPrecondition) and the old revision keeps serving. When the budget holds both, the
        new revision loads beside the old one, new leases switch to it in one step and the old one
        is unloaded once the leases it granted end ("beside"). When it does not, new leases wait
        (bounded by their deadlines and ``local.load_wait_s``) while the old one drains and goes and
        the new one loads ("queued"). Returns once the old revision is unloaded.
        """
        name = self.canonical(name)
        async with self._swap_lock:
            self._check_open()
            path = await self.locate(name)
            old = await self._steady(name)
            loop = asyncio.get_running_loop()
            # Hashing every file is blocking work; a mismatch raises FailedPrecondition here.
            files = await loop.run_in_executor(self._loader, self._store.open_model, name, path)
            new_revision = files.provenance.address
            old_revision = self.revision(name)
            if old is None:
                await self._lease_once(name)
                return SwapResult(
                    name, old_revision, self.revision(name), "loaded", f"'{name}' was not loaded; loaded it"
                )
            if new_revision == old_revision and old.path == path:
                return SwapResult(name, old_revision, new_revision, "unchanged", f"'{name}' already serves these files")
            footprint = dir_mb(path)
            budget = self._settings.local.memory_budget_mb
            if budget and footprint > budget:
                raise FailedPrecondition(
                    f"model '{name}' needs {footprint:.1f} MB, more than the whole budget of {budget:g} MB "
                    "(local.memory_budget_mb); the old revision keeps serving"
                )
            if not budget or self.used_mb() + footprint <= budget:
                await self._swap_beside(old, path, footprint)
                mode, how = "beside", "loaded beside the old revision, which drained and was unloaded"
            else:
                await self._swap_queued(old)
                mode, how = "queued", "calls waited while the old revision drained and the new one loaded"
            new_revision = self.revision(name)
            log.info("model swapped", extra={"model": name, "from": old_revision, "to": new_revision, "mode": mode})
            return SwapResult(name, old_revision, new_revision, mode, how)

    async def _steady(self, name: str) -> _Slot | None:
        """``name``'s slot once it is neither loading nor unloading (None when it is not loaded)."""
        while True:
            slot = self._slots.get(name)
            if slot is None or slot.state is ModelState.READY:
                return slot
            with contextlib.suppress(Exception):  # a failed load leaves no slot: the loop sees that
                await asyncio.shield(slot.ready if slot.state is ModelState.LOADING else slot.gone)

    def _new_slot(self, name: str, path: Path, footprint: float) -> _Slot:
        """A slot about to load ``path`` (admission or a swap's incoming revision)."""
        loop = asyncio.get_running_loop()
        decl = self._decl(name)
        return _Slot(
            name=name,
            path=path,
            footprint_mb=footprint,
            pinned=bool(decl and decl.pinned),
            ready=loop.create_future(),
            gone=loop.create_future(),
            plan=self._plan(name),
            last_used=self._clock(),
        )

    async def _lease_once(self, name: str) -> None:
        async with self.lease(name):
            pass

    async def _swap_beside(self, old: _Slot, path: Path, footprint: float) -> None:
        name = old.name
        new = self._new_slot(name, path, footprint)
        self._incoming[name] = new
        try:
            await self._load(new)
        finally:
            if self._incoming.get(name) is new:
                del self._incoming[name]
        if new.state is not ModelState.READY:
            await new.ready  # the load's error (the old revision serves on)
        # From here to the switch nothing awaits: no lease sees a half-switched pool.
        current = self._slots.get(name)
        if current is not None and current is not old:
            # The old one was evicted meanwhile and a request already loaded these files again.
            await self._release(new)
            return
        self._slots[name] = new
        if current is None:
            self._report()
            return
        old.state = ModelState.UNLOADING
        self._outgoing.add(old)
        self._report()
        await self._shielded(self._drain(old), f"drain:{name}")

    async def _swap_queued(self, old: _Slot) -> None:
        old.state = ModelState.UNLOADING  # new leases now wait for it to go, then load the new files
        await self._shielded(self._drain_in_place(old), f"drain:{old.name}")
        await self._lease_once(old.name)

    async def _shielded(self, work: Coroutine[Any, Any, None], task_name: str) -> None:
        """Run ``work`` to its end even if the swap is cancelled (close() waits for it)."""
        task = asyncio.get_running_loop().create_task(work, name=task_name)
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        await asyncio.shield(task)

    async def _drain(self, old: _Slot) -> None:
        """An old revision's leases end on it; then it is unloaded and leaves the budget."""
        try:
            await old.drained.wait()
            await self._release(old)
        finally:
            self._outgoing.discard(old)
            self._report()

    async def _drain_in_place(self, old: _Slot) -> None:
        await old.drained.wait()
        await self._remove(old)

    def queue_depth(self, name: str) -> int:
        """Requests waiting in ``name``'s batcher now (0 when it is not loaded): what spillover
        reads on every call to a local-first route, so a dictionary lookup and a length."""
        slot = self._slots.get(name[len(LOCAL_PREFIX) :] if name.startswith(LOCAL_PREFIX) else name)
        model = slot.model if slot is not None else None
        return 0 if model is None else model.batcher.queued_requests

    def loaded(self) -> list[LoadedModel]:
        """Every model the pool holds: serving ones, and during a swap the new revision loading
        beside the old one ("loading") and the old one draining ("unloading")."""
        now = self._clock()
        return [s.describe(now) for s in (*self._slots.values(), *self._incoming.values(), *self._outgoing)]

    def waiting(self, name: str) -> int:
        """Requests waiting now for ``name`` to load or for its old revision to go."""
        return self._waiting[self.canonical(name)]

    # -- idle reaper -------------------------------------------------------------------------
    def start(self) -> None:
        self._restart_reaper()

    def _restart_reaper(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        idle = self._settings.local.idle_unload_s
        if idle > 0 and not self._closed:
            with contextlib.suppress(RuntimeError):  # no running loop: started later by start()
                self._reaper = asyncio.get_running_loop().create_task(self._reap(idle), name="idle-reaper")

    def _idle(self, slot: _Slot, idle_s: float) -> bool:
        """Whether the reaper may unload ``slot`` now: in the pool, ready, unpinned, unused for ``idle_s``."""
        return (
            self._slots.get(slot.name) is slot
            and slot.state is ModelState.READY
            and not slot.pinned
            and slot.in_flight == 0
            and self._clock() - slot.last_used >= idle_s
        )

    async def _reap(self, idle_s: float) -> None:
        period = max(0.05, min(idle_s / 4, 5.0))
        while True:
            await asyncio.sleep(period)
            for slot in [s for s in self._slots.values() if self._idle(s, idle_s)]:
                async with self._admission:
                    # Judged again under the lock: while the reaper waited for it, a lease may have
                    # used the model and let it go (in_flight back to 0, last_used fresh), or an
                    # eviction or a reload may have changed it.
                    if self._idle(slot, idle_s):
                        log.info("unloading idle model", extra={"model": slot.name, "idle_s": idle_s})
                        await self._remove(slot)

    async def close(self) -> None:
        """Unload every model and refuse new leases; a load still under way is discarded.

        A load is not waited for (it may take minutes, and shutdown has a grace period): its slot
        leaves the pool now, whoever waits for it hears Unavailable, and its task is cancelled, so
        the session it was building is dropped when its thread finishes instead of starting a
        batcher and staying resident in a pool nobody serves from.
        """
        self._closed = True
        for early in self._early.values():
            early.task.cancel()
        self._early.clear()
        if self._reaper is not None:
            reaper, self._reaper = self._reaper, None
            reaper.cancel()
            await asyncio.wait([reaper])  # it may be mid-unload; nothing of the pool outlives close()
        loaders: list[asyncio.Task[None]] = []
        for slot in list(self._slots.values()):
            if slot.state is not ModelState.LOADING:
                continue
            del self._slots[slot.name]
            slot.state = ModelState.UNLOADING
            _settled(slot.ready, Unavailable(CLOSED_MESSAGE))
            _settled(slot.gone)
            if slot.loader is not None:
                slot.loader.cancel()
                loaders.append(slot.loader)
        for slot in list(self._incoming.values()):
            del self._incoming[slot.name]
            slot.state = ModelState.UNLOADING
            _settled(slot.ready, Unavailable(CLOSED_MESSAGE))
            _settled(slot.gone)
        if loaders:
            await asyncio.wait(loaders)  # each ends at its await; the executor thread is not waited for
        for slot in list(self._slots.values()):
            await self._remove(slot)
        if self._retiring:
            await asyncio.wait(set(self._retiring))


__all__ = ["LOCAL_PREFIX", "LocalModelPool", "ModelState", "dir_mb", "rss_mb"]
