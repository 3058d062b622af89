"""Tables that grow with what callers send stay bounded; files a manifest names stay in its folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from ratatoskr_client import FailedPrecondition
from ratatoskr_client.types import ChatOptions
from ratatoskr_server.config import load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.local.importer import import_bert_checkpoint
from ratatoskr_server.local.manifest import ModelManifest
from ratatoskr_server.policy.params import MAX_REMEMBERED_REJECTIONS, ParameterGuard
from ratatoskr_server.store.store import hash_folder
from ratatoskr_server.telemetry.metrics import MAX_MODEL_LABELS, MAX_UNKNOWN, UNKNOWN_TTL_S, Metrics
from tests.tiny_bert import make_tiny_bert_checkpoint


def test_model_label_values_are_bounded() -> None:
    metrics = Metrics()
    labels = [metrics.model_label(f"openai/model-{i}") for i in range(MAX_MODEL_LABELS + 50)]
    assert len(set(labels)) == MAX_MODEL_LABELS + 1 and labels[-1] == "other"
    assert metrics.model_label("openai/model-0") == "openai/model-0"  # known names keep their label


def test_refused_model_names_are_asked_about_again_after_a_while_or_a_reload() -> None:
    """The filter (the registry's match) is asked once per name, not once per call; a refused name
    is asked again after UNKNOWN_TTL_S or once the configuration changed, and the memory is bounded."""
    now = [0.0]
    asked: list[str] = []
    known = {"up/known"}
    metrics = Metrics(clock=lambda: now[0])

    def knows(name: str) -> bool:
        asked.append(name)
        return name in known

    metrics.model_filter = knows
    assert [metrics.model_label("up/bench") for _ in range(5)] == ["other"] * 5 and asked == ["up/bench"]
    known.add("up/bench")
    now[0] = UNKNOWN_TTL_S - 1
    assert metrics.model_label("up/bench") == "other" and len(asked) == 1
    now[0] = UNKNOWN_TTL_S + 1
    assert metrics.model_label("up/bench") == "up/bench" and len(asked) == 2
    assert metrics.model_label("up/late") == "other"
    known.add("up/late")
    metrics.forget_unknown()  # what a reload does
    assert metrics.model_label("up/late") == "up/late"
    for i in range(MAX_UNKNOWN + 10):
        metrics.model_label(f"caller-chosen/{i}")
    assert len(metrics._unknown) <= MAX_UNKNOWN


def test_labelled_children_are_kept_and_are_prometheus_own() -> None:
    metrics = Metrics()
    first = metrics.child(metrics.calls, "Chat", "other", "up", "OK")
    assert metrics.child(metrics.calls, "Chat", "other", "up", "OK") is first
    assert first is metrics.calls.labels(rpc="Chat", model="other", provider="up", code="OK")


def test_remembered_rejections_are_bounded() -> None:
    guard = ParameterGuard(load_settings(local={"preload": []}))
    message = "Unsupported parameter: 'seed' is not supported with this model."
    for i in range(MAX_REMEMBERED_REJECTIONS + 100):
        assert guard.remember_rejection("p", f"caller-chosen-{i}", message, ChatOptions(seed=1)) == ["seed"]
    assert len(guard._rejected) == MAX_REMEMBERED_REJECTIONS
    assert ("p", f"caller-chosen-{MAX_REMEMBERED_REJECTIONS + 99}", "seed") in guard._rejected  # the newest stay


@pytest.mark.parametrize("name", ["../other/model.onnx", "/etc/passwd", "sub/model.onnx", "..", ""])
def test_manifest_file_names_are_plain_names(name: str) -> None:
    with pytest.raises(ValidationError, match="plain file name"):
        ModelManifest(name="m", task="embed", architecture="bert", output_name="o", output_kind="logits",
                      max_length=8, onnx_file=name)  # fmt: skip


async def test_a_manifest_pointing_outside_its_folder_is_refused(tmp_path: Path) -> None:
    checkpoint = make_tiny_bert_checkpoint(tmp_path / "ckpt", seed=1)
    import_bert_checkpoint(checkpoint, tmp_path / "models", "good")
    shutil.copytree(tmp_path / "models" / "good", tmp_path / "models" / "escape")
    manifest = json.loads((tmp_path / "models" / "escape" / "manifest.json").read_text())
    manifest["onnx_file"] = "../good/model.onnx"
    (tmp_path / "models" / "escape" / "manifest.json").write_text(json.dumps(manifest))
    hash_folder(tmp_path / "models" / "escape").write(tmp_path / "models" / "escape")  # hashed: still refused
    gw = EmbeddedGateway(
        load_settings(local={"model_dir": tmp_path / "models", "preload": [], "auto_import_default": False})
    )
    try:
        with pytest.raises(FailedPrecondition, match="must be a plain file name inside the model's folder"):
            await gw.embed(["x"], model="escape")
        assert len((await gw.embed(["x"], model="good")).vectors) == 1
    finally:
        await gw.close()


def test_import_never_touches_the_process_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """os.umask can only be read by setting it, which races with every other thread creating files."""

    def forbidden(mask: int) -> int:
        raise AssertionError("os.umask called during an import")

    checkpoint = make_tiny_bert_checkpoint(tmp_path / "ckpt", seed=2)
    monkeypatch.setattr(os, "umask", forbidden)
    import_bert_checkpoint(checkpoint, tmp_path / "models", "m")
    monkeypatch.undo()
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "models" / "m").stat().st_mode & 0o777 == 0o777 & ~umask
