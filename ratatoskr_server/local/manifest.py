"""The small JSON file that tells the runtime how to serve a model directory.

Imported models get one written by ``ratatoskr models import``; users who
bring an ONNX file exported elsewhere write one by hand.  Keeping every
serving decision (input names, pooling, window) in this file means the
runtime never has to guess from the graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    name: str
    task: Literal["embed", "nli", "classify"]
    architecture: str = Field(description="Model family, e.g. 'bert'.")
    source: str = Field(default="", description="Where the weights were imported from.")
    onnx_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    #: Graph inputs in the order the tokenizer fills them; any subset of
    #: input_ids, attention_mask, token_type_ids.
    input_names: list[str] = Field(default_factory=lambda: ["input_ids", "attention_mask"])
    output_name: str
    #: "sentence_embedding": one vector per input, pooled (and maybe normalised) in the graph.
    #: "token_embeddings": one vector per token; the runtime pools with ``pooling``.
    #: "logits": classification head output, one row of ``labels`` per input.
    output_kind: Literal["sentence_embedding", "token_embeddings", "logits"]
    pooling: Literal["mean", "cls"] = "mean"
    #: True when the runtime must L2-normalise the vectors (False when the graph already does).
    normalize: bool = False
    dimension: int | None = None
    max_length: int = Field(gt=0)
    #: Graphs exported with a fixed sequence length (e.g. [batch, 160]) need every row padded to it.
    pad_to: int | None = Field(default=None, gt=0)
    #: Classification heads: label names in logit order (from the checkpoint's id2label).
    labels: list[str] = Field(default_factory=list)
    #: NLI heads: which label means "the premise entails the hypothesis"; when unset, the label
    #: whose name starts with "entail" is used.
    entailment_label: str | None = None
    quantization: str | None = None

    @field_validator("onnx_file", "tokenizer_file")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # A manifest names files beside it; "../x" or "/etc/x" would let it point the runtime anywhere.
        if not value or value in (".", "..") or Path(value).name != value or "\\" in value:
            raise ValueError(f"{value!r} must be a plain file name inside the model's folder")
        return value

    @classmethod
    def read(cls, model_dir: Path) -> ModelManifest:
        return cls.model_validate_json((model_dir / MANIFEST_FILE).read_text(encoding="utf-8"))

    def write(self, model_dir: Path) -> Path:
        path = model_dir / MANIFEST_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path
