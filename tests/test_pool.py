"""The model pool and the micro-batcher, on real ONNX Runtime sessions of tiny test-built models."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from ratatoskr_client import DeadlineExceeded, FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from ratatoskr_server.config import Settings, load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.local.importer import import_bert_checkpoint
from ratatoskr_server.local.model import LocalModel
from ratatoskr_server.local.pool import LocalModelPool, dir_mb
from ratatoskr_server.store.store import hash_folder
from tests.tiny_bert import make_tiny_bert_checkpoint

NAMES = ["m0", "m1", "m2", "m3"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small sentence encoders of equal footprint, different weights."""
    root = tmp_path_factory.mktemp("tiny-models")
    for seed, name in enumerate(NAMES):
        checkpoint = make_tiny_bert_checkpoint(tmp_path_factory.mktemp(f"ckpt-{name}"), seed=seed)
        import_bert_checkpoint(checkpoint, root, name)
    return root


@pytest.fixture
def footprint(tiny_root: Path) -> float:
    return dir_mb(tiny_root / "m0")


def _settings(root: Path, **local: Any) -> Settings:
    """The response cache is off: these tests count what reaches the pool, and repeat their inputs."""
    models = local.pop("models", {})
    return load_settings(
        local={"model_dir": root, "preload": [], "auto_import_default": False, **local},
        models=models,
        cache={"enabled": False},
    )


def _gateway(root: Path, **local: Any) -> EmbeddedGateway:
    return EmbeddedGateway(_settings(root, **local))


@pytest.fixture
async def make_gateway() -> AsyncIterator[Callable[..., EmbeddedGateway]]:
    made: list[EmbeddedGateway] = []

    def factory(root: Path, **local: Any) -> EmbeddedGateway:
        gw = _gateway(root, **local)
        gw.pool.start()
        made.append(gw)
        return gw

    yield factory
    for gw in made:
        await gw.close()


def _resident(gw: EmbeddedGateway) -> list[str]:
    return sorted(m.name for m in gw.loaded_models())


async def test_lru_eviction_order_and_budget(tiny_root: Path, footprint: float, make_gateway: Any) -> None:
    gw = make_gateway(tiny_root, memory_budget_mb=footprint * 2.5)  # room for two
    budget = gw.settings.local.memory_budget_mb
    trace = []
    for name in ["m0", "m1", "m0", "m2", "m3", "m0"]:
        await gw.embed(["x"], model=name)
        trace.append(_resident(gw))
        assert gw.pool.used_mb() <= budget
    assert trace == [
        ["m0"],
        ["m0", "m1"],
        ["m0", "m1"],
        ["m0", "m2"],  # m1 was least recently used
        ["m2", "m3"],  # then m0
        ["m0", "m3"],  # then m2
    ]
    assert gw.pool.load_counts == {"m0": 2, "m1": 1, "m2": 1, "m3": 1}


async def test_pinned_models_are_never_evicted(tiny_root: Path, footprint: float, make_gateway: Any) -> None:
    gw = make_gateway(tiny_root, memory_budget_mb=footprint * 2.5, models={"m0": {"pinned": True}})
    for name in ["m0", "m1", "m2", "m3", "m1"]:
        await gw.embed(["x"], model=name)
        assert "m0" in _resident(gw)
    (pinned,) = [m for m in gw.loaded_models() if m.name == "m0"]
    assert pinned.pinned and pinned.file_mb == pytest.approx(footprint, abs=0.1)
    # A budget filled by pinned models refuses clearly instead of evicting them.
    tight = make_gateway(tiny_root, memory_budget_mb=footprint * 1.5, models={"m0": {"pinned": True}})
    await tight.embed(["x"], model="m0")
    with pytest.raises(ResourceExhausted, match="memory_budget_mb"):
        await tight.embed(["x"], model="m1")
    with pytest.raises(FailedPrecondition, match="more than the whole budget"):
        await make_gateway(tiny_root, memory_budget_mb=footprint / 2).embed(["x"], model="m1")


async def test_idle_models_unload(tiny_root: Path, make_gateway: Any) -> None:
    gw = make_gateway(tiny_root, idle_unload_s=0.5, models={"m1": {"pinned": True}})
    await gw.embed(["x"], model="m1")
    await gw.embed(["x"], model="m0")
    assert _resident(gw) == ["m0", "m1"]
    for _ in range(10):  # used again and again: never idle long enough
        await asyncio.sleep(0.1)
        await gw.embed(["x"], model="m0")
    assert _resident(gw) == ["m0", "m1"]
    await asyncio.sleep(1.2)
    assert _resident(gw) == ["m1"]  # pinned stays


class FakeClock:
    """The pool's idle clock, moved by the test: idle time without sleeping for it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class WatchedLock(asyncio.Lock):
    """An asyncio.Lock that counts the acquires that found it held (and so had to wait)."""

    def __init__(self) -> None:
        super().__init__()
        self.contended = 0

    async def acquire(self) -> Literal[True]:
        if self.locked():
            self.contended += 1
        return await super().acquire()


async def test_the_reaper_spares_a_model_used_between_its_scan_and_its_unload(tiny_root: Path) -> None:
    clock = FakeClock()
    settings = load_settings(
        local={"model_dir": tiny_root, "preload": [], "auto_import_default": False, "idle_unload_s": 0.2}
    )
    with ThreadPoolExecutor(2) as executor:
        pool = LocalModelPool(settings, executor, clock=clock)
        lock = pool._admission = WatchedLock()
        try:
            async with pool.lease("m0"):
                pass
            pool.start()  # the reaper scans every 0.05 s of real time, judging idleness on the fake clock
            async with lock:
                clock.now += 1.0  # its next scan finds m0 idle...
                await _until(lambda: lock.contended == 1)  # ...and waits for the lock to unload it
                async with pool.lease("m0"):  # used meanwhile (leasing a ready model takes no lock)
                    pass
            async with lock:  # granted after the reaper's turn: asyncio.Lock serves waiters in order
                assert [m.name for m in pool.loaded()] == ["m0"]
            clock.now += 1.0  # now idle for real
            await _until(lambda: not pool.loaded())
        finally:
            await pool.close()


async def test_a_reload_applies_pinning_now_and_names_what_waits_for_the_next_load(
    tiny_root: Path, make_gateway: Any
) -> None:
    gw = make_gateway(tiny_root, models={"m1": {"pinned": True}})
    for name in ("m0", "m1"):
        await gw.embed(["x"], model=name)
    new = _settings(tiny_root, batching={"max_batch_size": 8}, models={"m0": {"pinned": True, "max_queue": 5}})
    notes = gw.pool.update_settings(new)
    assert {m.name: m.pinned for m in gw.loaded_models()} == {"m0": True, "m1": False}  # applied now
    assert notes == [
        "local.batching.max_batch_size = 8 applies to 'm0' when it is next loaded (it runs with 32 until then)",
        "models.m0.max_queue = 5 applies to 'm0' when it is next loaded (it runs with 1024 until then)",
        "local.batching.max_batch_size = 8 applies to 'm1' when it is next loaded (it runs with 32 until then)",
    ]
    async with gw.pool.lease("m0") as model:
        assert model.batcher.limits.max_batch_size == 32  # what the note says: not applied yet
    assert await gw.unload_model("m0")
    async with gw.pool.lease("m0") as model:
        assert (model.batcher.limits.max_batch_size, model.batcher.limits.max_queue) == (8, 5)
    assert gw.pool.settings_awaiting_reload() == [notes[2]]  # only m1 is left behind


async def test_the_daemons_reload_result_names_what_waits_for_the_next_load(
    tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ratatoskr_server.daemon as daemon_module
    from tests.conftest import toml_text

    monkeypatch.setattr(daemon_module, "configure_logging", lambda *args: None)  # leave pytest's log capture be
    local = {"model_dir": tiny_root, "preload": [], "auto_import_default": False}
    config = tmp_path / "ratatoskr.toml"
    config.write_text(toml_text({"local": local}), encoding="utf-8")
    daemon = daemon_module.Daemon(load_settings(config), config)
    try:
        await daemon.gateway.admin.load_model("m0")
        config.write_text(toml_text({"local": {**local, "batching": {"max_batch_size": 8}}}), encoding="utf-8")
        result = await daemon.reload()
        assert result.applied and result.changed == ["local.batching.max_batch_size"] and not result.needs_restart
        assert result.message == (
            "reloaded; local.batching.max_batch_size = 8 applies to 'm0' when it is next loaded "
            "(it runs with 32 until then)"
        )
    finally:
        await daemon.gateway.close()


async def test_a_lowered_budget_evicts_idle_unpinned_models_now(
    tiny_root: Path, footprint: float, make_gateway: Any
) -> None:
    gw = make_gateway(tiny_root, memory_budget_mb=footprint * 4.5)
    for name in ("m3", "m0", "m2", "m1"):  # m3 least recently used
        await gw.embed(["x"], model=name)
    async with gw.pool.lease("m0") as m0:
        pass
    async with gw.pool.lease("m1"):  # busy through the reloads
        # m3 is pinned by the same reload, so m2 (idle) and then m0 go, not m3.
        lowered = _settings(tiny_root, memory_budget_mb=footprint * 2.5, models={"m3": {"pinned": True}})
        assert gw.pool.update_settings(lowered) == []
        assert _resident(gw) == ["m1", "m3"] and gw.pool.used_mb() <= footprint * 2.5
        await _until(lambda: m0.batcher._worker is None)  # the evicted model's batcher is stopped
        # Below what the pinned and the busy model hold: nothing else to evict, and it says so.
        (note,) = gw.pool.update_settings(
            _settings(tiny_root, memory_budget_mb=footprint * 1.5, models={"m3": {"pinned": True}})
        )
        assert note.startswith(f"local.memory_budget_mb = {footprint * 1.5:g} is below the ")
        assert f"('m3' {footprint:.1f} MB pinned, 'm1' {footprint:.1f} MB 1 in flight)" in note
        assert _resident(gw) == ["m1", "m3"]


async def test_concurrent_first_use_loads_once(tiny_root: Path, make_gateway: Any) -> None:
    gw = make_gateway(tiny_root)
    results = await asyncio.gather(*(gw.embed([f"request {i}"], model="m2") for i in range(100)))
    assert len(results) == 100 and all(len(r.vectors) == 1 for r in results)
    assert gw.pool.load_counts["m2"] == 1


async def test_no_unload_under_an_in_flight_request(tiny_root: Path, footprint: float, make_gateway: Any) -> None:
    gw = make_gateway(tiny_root, memory_budget_mb=footprint * 2.5, load_wait_s=0.3)
    await gw.embed(["x"], model="m1")
    async with gw.pool.lease("m0"):
        # Budget pressure evicts the idle m1, never the busy m0.
        await gw.embed(["x"], model="m2")
        assert _resident(gw) == ["m0", "m2"]
        # An explicit unload waits for the request to finish.
        unload = asyncio.create_task(gw.unload_model("m0"))
        await asyncio.sleep(0.1)
        assert not unload.done()
        assert [m.state for m in gw.loaded_models() if m.name == "m0"] == ["unloading"]
    assert await unload is True
    assert _resident(gw) == ["m2"]
    # With every evictable model busy, a load waits (bounded) and then says why.
    async with gw.pool.lease("m2"):
        await gw.embed(["x"], model="m0")
        async with gw.pool.lease("m0"):
            with pytest.raises(ResourceExhausted, match="busy"):
                await gw.embed(["x"], model="m3")


class Gate:
    """Holds the model's ONNX runs until released, counting every run, its rows and padded tokens."""

    def __init__(self, model: LocalModel) -> None:
        self.open = threading.Event()
        self.entered = 0
        self.runs: list[int] = []
        #: Rows times the longest input of each run: what max_batch_tokens bounds.
        self.padded_tokens: list[int] = []
        real = model.batcher.run_batch

        def gated(encodings: list[Any]) -> Any:
            self.entered += 1
            self.open.wait(timeout=30)
            self.runs.append(len(encodings))
            self.padded_tokens.append(len(encodings) * max(len(e.ids) for e in encodings))
            return real(encodings)

        model.batcher.run_batch = gated


async def _gated(gw: EmbeddedGateway, name: str) -> tuple[LocalModel, Gate]:
    await gw.embed(["warm"], model=name)
    async with gw.pool.lease(name) as model:
        return model, Gate(model)


async def _until(predicate: Callable[[], bool]) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def test_concurrent_requests_merge_into_one_batch(tiny_root: Path, make_gateway: Any) -> None:
    gw = make_gateway(tiny_root, batching={"concurrency": 1})
    model, gate = await _gated(gw, "m0")
    first = asyncio.create_task(gw.embed(["the first request runs alone"], model="m0"))
    await _until(lambda: gate.entered == 1)
    others = [asyncio.create_task(gw.embed([f"sentence {i}"], model="m0")) for i in range(10)]
    await _until(lambda: model.batcher.queued_requests == 10)
    (waiting,) = [m for m in gw.loaded_models() if m.name == "m0"]
    # What `ratatoskr status` shows now: ten waiting; only the warm-up's batch of one has finished.
    assert (waiting.queued, waiting.mean_batch_size, waiting.largest_batch) == (10, 1.0, 1)
    gate.open.set()
    results = await asyncio.gather(first, *others)
    assert gate.runs == [1, 10]  # eleven requests, two session runs
    (ran,) = [m for m in gw.loaded_models() if m.name == "m0"]
    assert (ran.queued, ran.mean_batch_size, ran.largest_batch) == (0, 4.0, 10)  # 12 rows in 3 batches
    alone = [await gw.embed([f"sentence {i}"], model="m0") for i in range(3)]
    for merged, single in zip(results[1:4], alone, strict=True):
        np.testing.assert_allclose(merged.vectors, single.vectors, atol=1e-6)


async def test_oversized_request_is_split_not_refused(tiny_root: Path, make_gateway: Any) -> None:
    gw = make_gateway(tiny_root, batching={"max_batch_size": 8, "max_batch_tokens": 64, "concurrency": 1})
    _, gate = await _gated(gw, "m1")
    gate.open.set()
    texts = [("word " * (i % 9)).strip() for i in range(50)]  # 2 to 10 tokens with [CLS] and [SEP]
    result = await gw.embed(texts, model="m1")
    assert len(result.vectors) == 50
    assert sum(gate.runs) == 50 and max(gate.runs) <= 8
    # Eight of the longest inputs would be 80 padded tokens: the token budget cuts those slices shorter.
    assert max(gate.padded_tokens) <= 64
    assert min(gate.runs[:-1]) < 8  # the budget, not the row limit, ended some full slice
    # Rows are sorted by length before slicing, so the token budget limits long slices only.
    single = await gw.embed([texts[7]], model="m1")
    np.testing.assert_allclose(result.vectors[7], single.vectors[0], atol=1e-6)


async def test_queue_full_answers_resource_exhausted(tiny_root: Path, make_gateway: Any) -> None:
    gw = make_gateway(tiny_root, batching={"max_queue": 2, "concurrency": 1})
    model, gate = await _gated(gw, "m2")
    running = asyncio.create_task(gw.embed(["running"], model="m2"))
    await _until(lambda: gate.entered == 1)
    queued = [asyncio.create_task(gw.embed([f"queued {i}"], model="m2")) for i in range(2)]
    await _until(lambda: model.batcher.queued_requests == 2)
    with pytest.raises(ResourceExhausted, match="max_queue") as info:
        await gw.embed(["one too many"], model="m2")
    assert info.value.retry_after_s == 1.0
    gate.open.set()
    await asyncio.gather(running, *queued)


async def test_cancelled_and_expired_requests_are_skipped(tiny_root: Path, make_gateway: Any) -> None:
    gw = make_gateway(tiny_root, batching={"concurrency": 1})
    model, gate = await _gated(gw, "m3")
    stats = model.batcher.stats
    dropped_before = stats.rows_dropped
    running = asyncio.create_task(gw.embed(["running"], model="m3"))
    await _until(lambda: gate.entered == 1)
    cancelled = asyncio.create_task(gw.embed(["a", "b", "c"], model="m3"))
    expiring = asyncio.create_task(gw.embed(["d", "e"], model="m3", timeout=0.2))
    kept = asyncio.create_task(gw.embed(["f"], model="m3"))
    await _until(lambda: model.batcher.queued_requests == 3)
    cancelled.cancel()
    with pytest.raises(DeadlineExceeded):
        await expiring
    gate.open.set()
    await asyncio.gather(running, kept)
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert gate.runs == [1, 1]  # only "running" and "f" ever reached the model
    assert stats.rows_dropped - dropped_before == 5


async def test_two_batch_slots_share_a_lone_big_request(tiny_root: Path, make_gateway: Any) -> None:
    gw = make_gateway(tiny_root, batching={"concurrency": 2, "max_batch_size": 32})
    _, gate = await _gated(gw, "m0")
    big = asyncio.create_task(gw.embed([f"text {i}" for i in range(20)], model="m0"))
    await _until(lambda: gate.entered == 2)  # both slots busy with halves of one request
    gate.open.set()
    assert len((await big).vectors) == 20
    assert sorted(gate.runs) == [10, 10]


async def test_a_free_slot_does_not_wait_for_company_while_a_batch_runs(tiny_root: Path, make_gateway: Any) -> None:
    # The company wait is for an idle model; were it taken here, the second half would sit out all
    # of max_wait_ms (10 s, past _until's 5 s) beside a core with nothing to do.
    gw = make_gateway(tiny_root, batching={"concurrency": 2, "max_batch_size": 32})
    model, gate = await _gated(gw, "m2")
    model.batcher.limits = replace(model.batcher.limits, max_wait_ms=10_000)  # after the warm-up, which waits
    big = asyncio.create_task(gw.embed([f"text {i}" for i in range(32)], model="m2"))
    await _until(lambda: gate.entered == 2)  # the first half runs; the second starts at once beside it
    gate.open.set()
    assert len((await big).vectors) == 32
    assert sorted(gate.runs) == [16, 16]


async def test_a_single_text_rides_in_the_next_batch_beside_a_big_request(tiny_root: Path, make_gateway: Any) -> None:
    gw = make_gateway(tiny_root, batching={"concurrency": 1, "max_batch_size": 8})
    model, gate = await _gated(gw, "m1")
    running = asyncio.create_task(gw.embed(["running"], model="m1"))
    await _until(lambda: gate.entered == 1)
    big = asyncio.create_task(gw.embed([f"big request text {i}" for i in range(40)], model="m1"))
    await _until(lambda: model.batcher.queued_requests == 1)
    small = asyncio.create_task(gw.embed(["small"], model="m1"))
    await _until(lambda: model.batcher.queued_requests == 2)
    runs_when_small_finished: list[int] = []
    small.add_done_callback(lambda _: runs_when_small_finished.append(len(gate.runs)))
    gate.open.set()
    await asyncio.gather(running, big, small)
    assert runs_when_small_finished == [2]  # "running", then a batch with the small text in it
    assert gate.runs[1] == 8 and sum(gate.runs) == 42


@pytest.mark.parametrize(
    "where",
    [
        {"batching": {"concurrency": 1, "max_queue_tokens": 40}},
        {"batching": {"concurrency": 1}, "models": {"m2": {"max_queue_tokens": 40}}},  # a model's own limit
    ],
    ids=["local.batching", "models.NAME"],
)
async def test_the_queue_is_bounded_in_tokens(tiny_root: Path, make_gateway: Any, where: dict[str, Any]) -> None:
    gw = make_gateway(tiny_root, **where)
    model, gate = await _gated(gw, "m2")
    try:
        running = asyncio.create_task(gw.embed(["running"], model="m2"))
        await _until(lambda: gate.entered == 1)
        queued = asyncio.create_task(gw.embed(["word " * 20], model="m2"))  # 22 tokens with [CLS] and [SEP]
        await _until(lambda: model.batcher.queued_tokens == 22)
        # 44 tokens would wait: refused at once. (Were the limit ignored, this would queue behind
        # the gate: the timeout turns that into a failure instead of a hang.)
        with pytest.raises(ResourceExhausted, match=r"22 more would pass its limit \(max_queue_tokens = 40\)") as info:
            await asyncio.wait_for(gw.embed(["word " * 20], model="m2"), 5)
        assert info.value.retry_after_s == 1.0
        assert model.batcher.queued_tokens == 22  # the refused request left nothing behind
        # Within the budget is still taken: 22 + 7 tokens.
        fits = asyncio.create_task(gw.embed(["word " * 5], model="m2"))
        await _until(lambda: model.batcher.queued_tokens == 29)
    finally:
        gate.open.set()
    await asyncio.gather(running, queued, fits)
    assert model.batcher.queued_tokens == 0


async def test_a_stop_cancelled_midway_fails_the_queue_and_stays_cancelled(tiny_root: Path, make_gateway: Any) -> None:
    """The idle reaper unloads through stop(); close() cancels the reaper and must not be ignored."""
    gw = make_gateway(tiny_root, batching={"concurrency": 1})
    model, gate = await _gated(gw, "m0")
    try:
        running = asyncio.create_task(gw.embed(["running"], model="m0"))
        await _until(lambda: gate.entered == 1)
        queued = asyncio.create_task(gw.embed(["queued"], model="m0"))
        await _until(lambda: model.batcher.queued_requests == 1)
        worker = model.batcher._worker
        assert worker is not None
        stopper = asyncio.create_task(model.batcher.stop())
        await asyncio.sleep(0)  # one step: the stopper was scheduled first, so it runs to its wait
        assert worker.cancelling() and not stopper.done()  # it is inside stop(), waiting for its tasks
        stopper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopper
        for request in (queued, running):
            with pytest.raises(Unavailable, match="was unloaded"):
                await asyncio.wait_for(request, 10)
    finally:
        gate.open.set()


async def test_an_empty_submit_resolves_and_holds_no_slot(tiny_root: Path, make_gateway: Any) -> None:
    gw = make_gateway(tiny_root)
    await gw.embed(["warm"], model="m3")
    async with gw.pool.lease("m3") as model:
        out = await asyncio.wait_for(model.batcher.submit([]), 5)
    assert out.rows.shape[0] == 0
    assert model.batcher.queued_requests == 0 and model.batcher.queued_tokens == 0


async def test_rows_that_do_not_match_the_batch_fail_every_caller(tiny_root: Path, make_gateway: Any) -> None:
    gw = make_gateway(tiny_root, batching={"concurrency": 1})
    model, gate = await _gated(gw, "m0")
    gated = model.batcher.run_batch
    model.batcher.run_batch = lambda encodings: gated(encodings)[:-1]  # one row short
    gate.open.set()
    calls = [gw.embed([f"text {i}", "and another"], model="m0") for i in range(3)]
    outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
    assert all(isinstance(o, FailedPrecondition) for o in outcomes), outcomes
    assert "returned output of shape" in str(outcomes[0])
    model.batcher.run_batch = gated
    assert len((await gw.embed(["the model still serves"], model="m0")).vectors) == 1


async def test_a_manifest_that_disagrees_with_the_graph_is_named(
    tiny_root: Path, make_gateway: Any, tmp_path: Path
) -> None:
    import json
    import shutil

    shutil.copytree(tiny_root / "m0", tmp_path / "wrong")
    manifest = json.loads((tmp_path / "wrong" / "manifest.json").read_text())
    manifest["dimension"] = manifest["dimension"] // 2
    (tmp_path / "wrong" / "manifest.json").write_text(json.dumps(manifest))
    hash_folder(tmp_path / "wrong").write(tmp_path / "wrong")  # a deliberate edit, hashed again
    gw = make_gateway(tmp_path)
    for _ in range(2):  # and again: nothing is left waiting
        with pytest.raises(FailedPrecondition) as info:
            await asyncio.wait_for(gw.embed(["x", "y"], model="wrong"), 10)
        assert f"{tmp_path / 'wrong' / 'manifest.json'} describes [" in info.value.message
        assert f", {manifest['dimension']}]; fix the manifest" in info.value.message


async def test_a_slow_load_leaves_inference_its_thread(
    tiny_root: Path, make_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ratatoskr_server.local.pool as pool_module

    gw = make_gateway(tiny_root, inference_workers=1)
    await gw.embed(["warm"], model="m0")
    release = threading.Event()
    real = pool_module.open_local_model

    def slow_open(*args: Any, **kwargs: Any) -> Any:
        release.wait(timeout=60)
        return real(*args, **kwargs)

    monkeypatch.setattr(pool_module, "open_local_model", slow_open)
    loading = asyncio.create_task(gw.embed(["x"], model="m1"))
    await _until(lambda: "m1" in {m.name for m in gw.loaded_models()})  # m1 is loading now
    try:
        done = await asyncio.wait_for(gw.embed(["served meanwhile"], model="m0"), 10)
        assert len(done.vectors) == 1
    finally:
        release.set()
    assert len((await loading).vectors) == 1


async def test_close_discards_a_load_in_progress(
    tiny_root: Path, make_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load that finishes after close() must not start a batcher or leave its model resident."""
    import ratatoskr_server.local.pool as pool_module

    gw = make_gateway(tiny_root)
    entered, release, built = threading.Event(), threading.Event(), threading.Event()
    models: list[LocalModel] = []
    real = pool_module.open_local_model

    def slow_open(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(timeout=60)
        model = real(*args, **kwargs)
        models.append(model)
        built.set()
        return model

    monkeypatch.setattr(pool_module, "open_local_model", slow_open)
    waiting = asyncio.create_task(gw.embed(["x"], model="m1"))
    await asyncio.to_thread(entered.wait, 10)  # the session is being built now
    try:
        await gw.pool.close()
        assert gw.loaded_models() == []
        # close() has settled the load: no task of the pool is left to act on the session later.
        assert [t for t in asyncio.all_tasks() if t.get_name() == "load:m1"] == []
        with pytest.raises(Unavailable, match="pool is closed"):
            await asyncio.wait_for(waiting, 10)  # its waiter is told why, not left hanging
        with pytest.raises(Unavailable, match="the gateway is shutting down"):
            async with gw.pool.lease("m0"):
                pass
    finally:
        release.set()
        await asyncio.wait([waiting], timeout=30)  # should an assertion fail, end it rather than hang teardown
    assert await asyncio.to_thread(built.wait, 30)
    (model,) = models
    assert model.batcher._worker is None  # its batcher never started
    assert gw.loaded_models() == [] and gw.pool.load_counts["m1"] == 0


async def test_close_ends_a_reaper_caught_mid_unload(tiny_root: Path, make_gateway: Any) -> None:
    gw = make_gateway(tiny_root, idle_unload_s=0.2)
    async with gw.pool.lease("m0") as model:
        pass
    stopping, resume = asyncio.Event(), asyncio.Event()
    real_stop = model.batcher.stop

    async def slow_stop() -> None:
        await real_stop()
        stopping.set()
        await resume.wait()  # the reaper is inside the unload when close() comes

    model.batcher.stop = slow_stop  # type: ignore[method-assign]
    await asyncio.wait_for(stopping.wait(), 10)
    await gw.pool.close()
    assert [t for t in asyncio.all_tasks() if t.get_name() == "idle-reaper"] == []


async def test_a_slow_first_use_import_does_not_hold_back_other_models(
    tiny_root: Path, make_gateway: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import ratatoskr_server.local.importer as importer_module  # the pool imports it from there when needed

    checkpoint = make_tiny_bert_checkpoint(tmp_path / "ckpt", seed=9)
    gw = make_gateway(tiny_root, models={"imported-later": {"source": str(checkpoint)}})
    release, entered = threading.Event(), threading.Event()
    real = importer_module.import_bert_checkpoint

    def slow_import(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(timeout=60)
        return real(*args, **kwargs)

    monkeypatch.setattr(importer_module, "import_bert_checkpoint", slow_import)
    importing = asyncio.create_task(gw.embed(["x"], model="imported-later"))
    await _until(entered.is_set)  # the import is under way
    try:
        # m2 has never been loaded: its first load must not queue behind the import.
        assert len((await asyncio.wait_for(gw.embed(["meanwhile"], model="m2"), 10)).vectors) == 1
    finally:
        release.set()
    assert len((await importing).vectors) == 1


class HeldLoader(ThreadPoolExecutor):
    """A loader executor that runs each job only once ``go`` is set: loads under way, not finished."""

    def __init__(self) -> None:
        super().__init__(max_workers=2, thread_name_prefix="held-loader")
        self.go = threading.Event()
        self.jobs = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.jobs += 1

        def held() -> Any:
            self.go.wait(timeout=30)
            return fn(*args, **kwargs)

        return super().submit(held)


async def test_loads_begun_early_run_once_and_tell_their_outcome_to_the_first_lease(
    tiny_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What the daemon does before importing its fronts: begin_loading returns as soon as each load
    is on a loader thread (not when it is done), the first lease takes that load instead of starting
    another, and an early load's failure is that lease's error. Its "model loaded" line comes with
    that lease too: a daemon that fails to start before it leases says only why it failed."""
    caplog.set_level(logging.INFO, logger="ratatoskr_server.local.pool")
    loader = HeldLoader()
    executor = ThreadPoolExecutor(max_workers=2)
    pool = LocalModelPool(_settings(tiny_root), executor, loader)
    try:
        await asyncio.wait_for(pool.begin_loading(["m0", "nobody"]), 10)
        assert loader.jobs == 1, "m0's session build is handed to a loader thread; 'nobody' failed before"
        assert [(m.name, m.state) for m in pool.loaded()] == [("m0", "loading")]
        loader.go.set()
        await _until(lambda: bool(pool.loaded()) and pool.loaded()[0].state == "ready")
        assert not [r for r in caplog.records if r.getMessage() == "model loaded"]
        async with pool.lease("m0") as model:
            assert model.manifest.task == "embed"
        assert pool.load_counts["m0"] == 1 and loader.jobs == 1
        assert [r.model for r in caplog.records if r.getMessage() == "model loaded"] == ["m0"]  # type: ignore[attr-defined]
        with pytest.raises(NotFound, match="unknown model 'nobody'"):
            async with pool.lease("nobody"):
                pass
    finally:
        await pool.close()
        executor.shutdown()
        loader.shutdown()
