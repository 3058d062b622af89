"""The execution provider reported is the one really in use; CUDA without a GPU falls back quietly."""

from __future__ import annotations

from pathlib import Path

import pytest

from ratatoskr_client import FailedPrecondition
from ratatoskr_server.local.session import CPU, create_session, nvidia_gpu_present
from tests.conftest import MODEL


@pytest.mark.skipif(nvidia_gpu_present(), reason="this host has a GPU: the fallback path cannot be taken")
def test_cuda_without_gpu_falls_back_to_cpu_without_ort_noise(
    model_root: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    onnx = model_root / MODEL / "model.onnx"
    for device in ("auto", "cuda"):
        handle = create_session(onnx, device=device)
        assert handle.provider == CPU == handle.session.get_providers()[0]
        assert handle.device == "cpu"
    assert "no NVIDIA GPU" in handle.fallback_reason
    err = capfd.readouterr().err
    assert "libonnxruntime_providers_cuda" not in err and "Failed to create CUDAExecutionProvider" not in err
    with pytest.raises(FailedPrecondition, match="require_device"):
        create_session(onnx, device="cuda", require_device=True)


@pytest.mark.skipif(not nvidia_gpu_present(), reason="needs an NVIDIA GPU")
def test_cuda_is_used_when_a_gpu_is_present(model_root: Path) -> None:
    handle = create_session(model_root / MODEL / "model.onnx", device="cuda", require_device=True)
    assert handle.provider == "CUDAExecutionProvider"


def test_cpu_is_cpu(model_root: Path) -> None:
    handle = create_session(model_root / MODEL / "model.onnx", device="cpu")
    assert handle.session.get_providers() == [CPU] and handle.fallback_reason == ""
