"""Domain types: the one vocabulary shared by the client, the embedded gateway and the daemon.

Protobuf messages never leave the transport (``convert.py``); everything
above it speaks these plain, immutable dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Task(StrEnum):
    CHAT = "chat"
    GENERATE = "generate"
    EMBED = "embed"
    NLI = "nli"
    CLASSIFY = "classify"


@dataclass(frozen=True, slots=True)
class Timing:
    """Where a call's time went, as HF text-embeddings-inference reports it."""

    queue_ms: float = 0.0
    tokenization_ms: float = 0.0
    inference_ms: float = 0.0
    total_ms: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class EmbedResult:
    """Vectors in input order, with the tokens the model read for each input."""

    vectors: list[list[float]]
    tokens: list[int]
    truncated: list[bool]
    dimension: int
    model: str
    normalized: bool
    usage: Usage = field(default_factory=Usage)
    timing: Timing = field(default_factory=Timing)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    name: str
    task: Task | None
    state: str
    device: str
    memory_mb: float = 0.0
    file_mb: float = 0.0
    pinned: bool = False
    requests: int = 0
    idle_s: float = 0.0
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class ServerStatus:
    version: str
    pid: int
    uptime_s: float
    listen: list[str]
    in_flight: int
    max_in_flight: int
    state: str
    models: list[LoadedModel]
    config_path: str = ""


@dataclass(frozen=True, slots=True)
class ReloadResult:
    applied: bool
    changed: list[str]
    needs_restart: list[str]
    message: str = ""


@dataclass(frozen=True, slots=True)
class LabelScore:
    label: str
    score: float


@dataclass(frozen=True, slots=True)
class NliPrediction:
    """Probabilities per label in the model's label order, and the most probable label."""

    scores: list[LabelScore]
    label: str


@dataclass(frozen=True, slots=True)
class NliResult:
    predictions: list[NliPrediction]
    model: str
    usage: Usage = field(default_factory=Usage)
    timing: Timing = field(default_factory=Timing)


@dataclass(frozen=True, slots=True)
class ClassifyResult:
    """Candidate labels sorted by score, highest first; ``strategy`` is "nli" or "embedding"."""

    scores: list[LabelScore]
    model: str
    strategy: str
    usage: Usage = field(default_factory=Usage)
    timing: Timing = field(default_factory=Timing)


@dataclass(frozen=True, slots=True)
class Token:
    id: int
    text: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class TokenizeResult:
    tokens: list[Token]
    model: str
    timing: Timing = field(default_factory=Timing)


@dataclass(frozen=True, slots=True)
class CountTokensResult:
    counts: list[int]
    total: int
    model: str
    timing: Timing = field(default_factory=Timing)
