"""ONNX Runtime sessions on the device that is really there.

The provider in use is read from ``session.get_providers()`` after creation:
``get_available_providers()`` lists CUDA whenever onnxruntime-gpu is
installed, GPU or not.  CUDA is not even attempted without an NVIDIA device
node, which keeps ORT's library-load error out of the log on CPU hosts.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from ratatoskr_client.errors import FailedPrecondition

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_ORT_ERROR = 3
_ORT_FATAL = 4

# ORT's own logger prints warnings to stderr past our structured log; keep it to errors.
ort.set_default_logger_severity(_ORT_ERROR)


@dataclass(frozen=True, slots=True)
class SessionHandle:
    session: ort.InferenceSession
    #: The execution provider that runs the graph, from the session itself.
    provider: str
    #: Why the requested device was not used, if it was not.
    fallback_reason: str = ""

    @property
    def device(self) -> str:
        return "cuda" if self.provider == CUDA else "cpu"


def nvidia_gpu_present() -> bool:
    """An NVIDIA device node exists; cheap, and true only where CUDA can work."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.isdir("/proc/driver/nvidia/gpus")


def create_session(
    path: Path,
    *,
    device: str,
    require_device: bool = False,
    intra_op_threads: int = 0,
    spin_wait: bool = True,
    graph: bytes | None = None,
) -> SessionHandle:
    """A session on ``device`` ("auto", "cpu", "cuda"), falling back to CPU unless ``require_device``.

    ``graph``: the model's bytes (a decrypted model, never written to disk); ``path`` then only
    names it in messages.
    """
    source: str | bytes = graph if graph is not None else str(path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = _ORT_ERROR
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    if not spin_wait:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")

    want_cuda = device in ("auto", "cuda")
    reason = ""
    if want_cuda:
        if CUDA not in ort.get_available_providers():
            reason = "this onnxruntime build has no CUDA execution provider"
        elif not nvidia_gpu_present():
            reason = "no NVIDIA GPU is present"
        else:
            # A GPU is there but CUDA libraries may still be missing: silence ORT's
            # own error line and report the outcome ourselves.
            ort.set_default_logger_severity(_ORT_FATAL)
            try:
                session = ort.InferenceSession(source, sess_options=options, providers=[CUDA, CPU])
            finally:
                ort.set_default_logger_severity(_ORT_ERROR)
            used = session.get_providers()[0]
            if used == CUDA:
                return SessionHandle(session, used)
            reason = "the CUDA execution provider failed to initialise (CUDA/cuDNN libraries missing?)"
        if device == "cuda":
            if require_device:
                raise FailedPrecondition(
                    f"device 'cuda' was required for {path.parent.name} but {reason}; "
                    'set device = "cpu" or require_device = false'
                )
            log.warning("cuda requested, running on cpu", extra={"model": path.parent.name, "reason": reason})
    session = ort.InferenceSession(source, sess_options=options, providers=[CPU])
    return SessionHandle(session, session.get_providers()[0], reason if device == "cuda" else "")
