"""One loaded local model: its session, tokenizer and batcher, and how to turn rows into answers.

Blocking parts (padding, ``session.run``, post-processing) run in the
inference executor through the batcher; tokenizing a big request does too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Encoding

from ratatoskr_client.errors import FailedPrecondition
from ratatoskr_client.types import Task
from ratatoskr_server.local.batcher import BatchLimits, MicroBatcher, Rows
from ratatoskr_server.local.encoder import sentence_vectors
from ratatoskr_server.local.manifest import MANIFEST_FILE, ModelManifest
from ratatoskr_server.local.session import SessionHandle, create_session
from ratatoskr_server.local.tokenization import TextInput, TextTokenizer
from ratatoskr_server.store.provenance import Provenance
from ratatoskr_server.store.store import ModelFiles

#: Requests with more inputs than this are tokenized in the executor rather than on the event loop.
_INLINE_TOKENIZE_MAX = 16
_FEEDS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True, slots=True)
class Inference:
    rows: Rows
    tokens: list[int]
    truncated: list[bool]
    tokenization_ms: float
    queue_ms: float
    inference_ms: float


class LocalModel:
    def __init__(
        self,
        name: str,
        path: Path,
        manifest: ModelManifest,
        handle: SessionHandle,
        tokenizer: TextTokenizer,
        executor: Executor,
        limits: BatchLimits,
        provenance: Provenance | None = None,
    ) -> None:
        self.name = name
        #: What the store proved of the files this model was built from.
        self.provenance = provenance
        self.path = path
        self.manifest = manifest
        self.handle = handle
        self.tokenizer = tokenizer
        self.executor = executor
        graph_inputs = {i.name for i in handle.session.get_inputs()}
        unknown = [n for n in manifest.input_names if n not in _FEEDS]
        missing = [n for n in manifest.input_names if n not in graph_inputs]
        required = [n for n in graph_inputs if n not in manifest.input_names]
        if unknown or missing or required:
            raise FailedPrecondition(
                f"model '{name}': manifest input_names {manifest.input_names} do not match the graph's inputs "
                f"{sorted(graph_inputs)}; the runtime can feed {list(_FEEDS)}"
            )
        outputs = [o.name for o in handle.session.get_outputs()]
        if manifest.output_name not in outputs:
            raise FailedPrecondition(f"model '{name}': output {manifest.output_name!r} is not in the graph {outputs}")
        if manifest.output_kind == "logits" and not manifest.labels:
            raise FailedPrecondition(f"model '{name}': a logits model needs its labels in the manifest")
        if manifest.output_kind == "logits":
            self._dimension = len(manifest.labels)
        else:  # read from the graph once: every embedding call reports it
            shape = handle.session.get_outputs()[0].shape
            self._dimension = int(manifest.dimension or shape[-1])
        self.batcher = MicroBatcher(name, self.run_batch, executor, limits, fixed_width=manifest.pad_to)

    @property
    def task(self) -> Task:
        return Task(self.manifest.task)

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def normalized(self) -> bool:
        """Vectors leave with unit norm when the graph (imported models) or we normalise them."""
        return self.manifest.normalize or self.manifest.output_kind == "sentence_embedding"

    def run_batch(self, encodings: list[Encoding]) -> Rows:
        """One ONNX run over a batch the batcher formed (called in the executor)."""
        batch = self.tokenizer.pad(encodings)
        arrays = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        arrays["token_type_ids"] = batch.token_type_ids
        feeds = {n: arrays[n] for n in self.manifest.input_names}
        (out,) = self.handle.session.run([self.manifest.output_name], feeds)
        output: npt.NDArray[np.float32] = np.asarray(out, dtype=np.float32)
        self._check_output(output, len(encodings))
        if self.manifest.output_kind == "logits":
            return output
        return sentence_vectors(output, batch.attention_mask, self.manifest)

    def _check_output(self, output: npt.NDArray[np.float32], rows: int) -> None:
        """One row per input, of the width the manifest promises, before any row reaches a caller."""
        manifest = self.manifest
        ndim = 3 if manifest.output_kind == "token_embeddings" else 2
        width = len(manifest.labels) if manifest.output_kind == "logits" else manifest.dimension
        if output.ndim == ndim and output.shape[0] == rows and (not width or output.shape[-1] == width):
            return
        shape = [rows, *(["tokens"] if ndim == 3 else []), width or "dimension"]
        raise FailedPrecondition(
            f"model '{self.name}': output {manifest.output_name!r} ({manifest.output_kind}) has shape "
            f"{list(output.shape)} for {rows} inputs, but {self.path / MANIFEST_FILE} describes {shape}; "
            "fix the manifest or re-export the graph"
        )

    async def infer(
        self, inputs: Sequence[TextInput], *, truncate: bool, deadline: float | None, what: str = "input"
    ) -> Inference:
        """Rows for ``inputs`` in order: vectors for encoders, logits for classification heads."""
        started = time.perf_counter()
        if len(inputs) > _INLINE_TOKENIZE_MAX:
            loop = asyncio.get_running_loop()
            encodings = await loop.run_in_executor(
                self.executor, lambda: self.tokenizer.encode(inputs, truncate=truncate, what=what)
            )
        else:
            encodings = self.tokenizer.encode(inputs, truncate=truncate, what=what)
        tokenized = time.perf_counter()
        out = await self.batcher.submit(encodings, deadline)
        # The batcher reports run time summed over the batches that held these inputs, and those may
        # run side by side; this request's parts are its own wall time split at the first run.
        waited_ms = (time.perf_counter() - tokenized) * 1000
        queue_ms = min(out.queue_ms, waited_ms)
        return Inference(
            rows=out.rows,
            tokens=[len(e.ids) for e in encodings],
            truncated=[self.tokenizer.was_cut(e) for e in encodings],
            tokenization_ms=(tokenized - started) * 1000,
            queue_ms=queue_ms,
            inference_ms=min(out.inference_ms, waited_ms - queue_ms),
        )


def open_local_model(
    name: str,
    path: Path,
    files: ModelFiles,
    *,
    device: str,
    require_device: bool,
    intra_op_threads: int,
    spin_wait: bool = True,
    executor: Executor,
    limits: BatchLimits,
) -> LocalModel:
    """Create the session and tokenizer from files the store checked (blocking: run it in the executor)."""
    manifest = files.manifest
    if manifest.pad_to is not None and manifest.max_length > manifest.pad_to:
        raise FailedPrecondition(
            f"model '{name}': max_length {manifest.max_length} exceeds pad_to {manifest.pad_to}, "
            "the graph's fixed sequence length"
        )
    graph = files.graph
    try:
        handle = create_session(
            path / manifest.onnx_file,
            device=device,
            require_device=require_device,
            intra_op_threads=intra_op_threads,
            spin_wait=spin_wait,
            graph=graph if isinstance(graph, bytes) else None,
        )
    except FailedPrecondition:
        raise
    except Exception as err:  # onnxruntime raises its own exception types for bad graphs
        raise FailedPrecondition(f"model '{name}': onnxruntime cannot load {manifest.onnx_file}: {err}") from None
    tokenizer = build_tokenizer(name, files)
    return LocalModel(name, path, manifest, handle, tokenizer, executor, limits, files.provenance)


def build_tokenizer(name: str, files: ModelFiles) -> TextTokenizer:
    manifest = files.manifest
    try:
        return TextTokenizer(files.tokenizer_json, manifest.max_length, name, pad_to=manifest.pad_to)
    except Exception as err:  # the tokenizers library raises plain Exceptions for bad JSON
        raise FailedPrecondition(f"model '{name}': {manifest.tokenizer_file} is not a tokenizer: {err}") from None
