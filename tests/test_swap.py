"""Zero-downtime model swap: a model's files change on disk and the pool serves the new revision
without failing a call, on real ONNX Runtime sessions of tiny test-built encoders.

Calls are held in flight deterministically by gating the old model's batch runs (a threading.Event
the test opens), and every wait is for an observable condition of the pool, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ratatoskr_client import FailedPrecondition
from ratatoskr_client.types import EmbedResult
from ratatoskr_server.config import load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.local.importer import import_bert_checkpoint
from ratatoskr_server.local.model import LocalModel
from ratatoskr_server.local.pool import dir_mb
from ratatoskr_server.store.files import CONTENT_FILE
from tests.conftest import DaemonProcess, run_ratatoskr
from tests.tiny_bert import make_tiny_bert_checkpoint

NAME = "sw"
TEXT = ["the swap must not drop this call"]


@pytest.fixture(scope="module")
def revisions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same model name imported twice from different weights: revision A and revision B."""
    folders = []
    for seed in (11, 12):
        root = tmp_path_factory.mktemp(f"rev-{seed}")
        import_bert_checkpoint(
            make_tiny_bert_checkpoint(tmp_path_factory.mktemp(f"ckpt-{seed}"), seed=seed), root, NAME
        )
        folders.append(root / NAME)
    return folders[0], folders[1]


@pytest.fixture
def root(revisions: tuple[Path, Path], tmp_path: Path) -> Path:
    """A model_dir holding revision A of the model, the test's own copy."""
    shutil.copytree(revisions[0], tmp_path / NAME)
    return tmp_path


def address(folder: Path) -> str:
    return str(json.loads((folder / CONTENT_FILE).read_text())["address"])


def replace_files(target: Path, source: Path) -> None:
    """Overwrite the model's files with another revision's, content.json included (as an import would)."""
    for file in sorted(source.iterdir()):
        shutil.copyfile(file, target / f".{file.name}.new")
        (target / f".{file.name}.new").replace(target / file.name)


def corrupt(folder: Path) -> None:
    """Flip one byte of the graph without updating content.json: what the store must refuse."""
    graph = folder / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))


@pytest.fixture
async def make_gateway() -> AsyncIterator[Callable[..., EmbeddedGateway]]:
    made: list[EmbeddedGateway] = []

    def factory(model_root: Path, **local: Any) -> EmbeddedGateway:
        settings = load_settings(
            local={"model_dir": model_root, "preload": [], "auto_import_default": False, **local},
            cache={"enabled": False},  # every answer below comes from a model, not from the cache
        )
        gw = EmbeddedGateway(settings)
        gw.pool.start()
        made.append(gw)
        return gw

    yield factory
    for gw in made:
        await gw.close()


@pytest.fixture
async def vectors(revisions: tuple[Path, Path], make_gateway: Callable[..., EmbeddedGateway]) -> tuple[Any, Any]:
    """What revision A and revision B answer for TEXT, each computed alone."""
    out = []
    for folder in revisions:
        out.append(np.array((await make_gateway(folder.parent).embed(TEXT, model=NAME)).vectors[0]))
    assert not np.allclose(out[0], out[1], atol=1e-3)  # the revisions are told apart by their answers
    return out[0], out[1]


class Gate:
    """Holds a model's batch runs until opened, so a call stays in flight on that model."""

    def __init__(self, model: LocalModel) -> None:
        self.open = threading.Event()
        self.entered = 0
        real = model.batcher.run_batch

        def gated(encodings: list[Any]) -> Any:
            self.entered += 1
            self.open.wait(timeout=30)
            return real(encodings)

        model.batcher.run_batch = gated


async def until(predicate: Callable[[], bool]) -> None:
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


def vector(result: EmbedResult) -> Any:
    return np.array(result.vectors[0])


async def hold_a_call(gw: EmbeddedGateway) -> tuple[asyncio.Task[EmbedResult], Gate]:
    """A call in flight on the loaded (old) revision, held inside its batch run."""
    await gw.embed(["warm"], model=NAME)
    async with gw.pool.lease(NAME) as model:
        gate = Gate(model)
    held = asyncio.create_task(gw.embed(TEXT, model=NAME))
    await until(lambda: gate.entered == 1)
    return held, gate


async def test_swap_loads_beside_switches_and_drains(
    root: Path, revisions: tuple[Path, Path], vectors: tuple[Any, Any], make_gateway: Callable[..., EmbeddedGateway]
) -> None:
    old_vec, new_vec = vectors
    rev_a, rev_b = address(revisions[0]), address(revisions[1])
    gw = make_gateway(root)
    held, gate = await hold_a_call(gw)
    assert gw.pool.revision(NAME) == rev_a

    replace_files(root / NAME, revisions[1])
    swap = asyncio.create_task(gw.swap_model(NAME))
    await until(lambda: gw.pool.revision(NAME) == rev_b)  # switched: the new revision serves new calls
    states = sorted((m.revision, m.state, m.in_flight) for m in gw.loaded_models())
    assert states == sorted([(rev_a, "unloading", 1), (rev_b, "ready", 0)])  # both held, old draining
    after = await gw.embed(TEXT, model=NAME)
    assert np.allclose(vector(after), new_vec, atol=1e-5)
    assert not held.done() and not swap.done()  # the held call is still on the old revision

    gate.open.set()
    assert np.allclose(vector(await held), old_vec, atol=1e-5)  # it finished on the old revision
    result = await swap
    assert (result.old_revision, result.new_revision, result.mode) == (rev_a, rev_b, "beside")
    assert [(m.revision, m.state) for m in gw.loaded_models()] == [(rev_b, "ready")]  # the old one is unloaded
    assert gw.pool.load_counts[NAME] == 2
    assert gw.pool.used_mb() == pytest.approx(dir_mb(root / NAME))

    again = await gw.swap_model(NAME)
    assert (again.mode, again.new_revision) == ("unchanged", rev_b)


async def test_a_budget_for_one_queues_calls_until_the_new_revision_loads(
    root: Path, revisions: tuple[Path, Path], vectors: tuple[Any, Any], make_gateway: Callable[..., EmbeddedGateway]
) -> None:
    old_vec, new_vec = vectors
    rev_a, rev_b = address(revisions[0]), address(revisions[1])
    budget = dir_mb(root / NAME) * 1.5  # room for one revision, not two
    gw = make_gateway(root, memory_budget_mb=budget)
    held, gate = await hold_a_call(gw)

    replace_files(root / NAME, revisions[1])
    swap = asyncio.create_task(gw.swap_model(NAME))
    await until(lambda: [m.state for m in gw.loaded_models()] == ["unloading"])
    waiting = [asyncio.create_task(gw.embed(TEXT, model=NAME)) for _ in range(3)]
    await until(lambda: gw.pool.waiting(NAME) == 3)  # queued behind the swap, not refused
    assert not swap.done() and not any(w.done() for w in waiting)
    assert gw.pool.used_mb() <= budget

    gate.open.set()
    assert np.allclose(vector(await held), old_vec, atol=1e-5)
    for answer in await asyncio.gather(*waiting):
        assert np.allclose(vector(answer), new_vec, atol=1e-5)
    result = await swap
    assert (result.old_revision, result.new_revision, result.mode) == (rev_a, rev_b, "queued")
    assert [(m.revision, m.state) for m in gw.loaded_models()] == [(rev_b, "ready")]
    assert gw.pool.used_mb() <= budget


async def test_broken_files_are_refused_and_the_old_revision_keeps_serving(
    root: Path, revisions: tuple[Path, Path], vectors: tuple[Any, Any], make_gateway: Callable[..., EmbeddedGateway]
) -> None:
    old_vec, _ = vectors
    rev_a = address(revisions[0])
    gw = make_gateway(root)
    held, gate = await hold_a_call(gw)
    corrupt(root / NAME)
    with pytest.raises(FailedPrecondition, match=r"model\.onnx"):
        await gw.swap_model(NAME)
    assert [(m.revision, m.state) for m in gw.loaded_models()] == [(rev_a, "ready")]
    gate.open.set()
    assert np.allclose(vector(await held), old_vec, atol=1e-5)
    assert np.allclose(vector(await gw.embed(TEXT, model=NAME)), old_vec, atol=1e-5)


def test_swap_through_the_daemon_under_load(root: Path, revisions: tuple[Path, Path], vectors: tuple[Any, Any]) -> None:
    """Admin.SwapModel over gRPC and `ratatoskr models swap`, with a client embedding throughout; then
    Admin.Reload picking up changed files the same way."""
    old_vec, new_vec = vectors
    rev_a, rev_b = address(revisions[0]), address(revisions[1])
    daemon = DaemonProcess(root, local={"preload": [NAME]}, cache={"enabled": False}).start()
    try:
        answers: list[Any] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def load() -> None:
            with daemon.client() as client:
                while not stop.is_set():
                    try:
                        answers.append(vector(client.embed(TEXT, model=NAME)))
                    except BaseException as err:  # counted: the test asserts there are none
                        errors.append(err)

        with daemon.client() as client:
            thread = threading.Thread(target=load)
            thread.start()
            try:
                # Broken files first: refused over gRPC, the old revision serves on.
                corrupt(root / NAME)
                with pytest.raises(FailedPrecondition):
                    client.swap_model(NAME)
                replace_files(root / NAME, revisions[1])
                done = run_ratatoskr("models", "swap", NAME, "--socket", str(daemon.socket))
                assert done.returncode == 0, done.stderr
                assert f"{NAME}: {rev_a} -> {rev_b} (beside)" in done.stdout
                count = len(answers)
                while len(answers) < count + 3:  # answers that started after the swap returned
                    thread.join(timeout=0.05)
            finally:
                stop.set()
                thread.join()
            assert errors == []
            assert all(np.allclose(a, old_vec, atol=1e-5) or np.allclose(a, new_vec, atol=1e-5) for a in answers)
            assert all(np.allclose(a, new_vec, atol=1e-5) for a in answers[count + 1 :])
            loaded = client.list_loaded_models()
            assert [(m.revision, m.state) for m in loaded] == [(rev_b, "ready")]
            assert client.swap_model(NAME).mode == "unchanged"
            # A reload takes what is on disk too: the files go back to A, Reload swaps to them.
            replace_files(root / NAME, revisions[0])
            reloaded = client.reload()
            assert reloaded.applied and f"model '{NAME}': {rev_b} -> {rev_a} (beside)" in reloaded.message
            assert np.allclose(vector(client.embed(TEXT, model=NAME)), old_vec, atol=1e-5)
            assert [m.revision for m in client.list_loaded_models()] == [rev_a]
            corrupt(root / NAME)  # refused files: the reload still applies, the model keeps serving A
            reloaded = client.reload()
            assert reloaded.applied and f"model '{NAME}' keeps its old revision" in reloaded.message
            assert np.allclose(vector(client.embed(TEXT, model=NAME)), old_vec, atol=1e-5)
    finally:
        daemon.stop()
