"""Domain types: the one vocabulary shared by the client, the embedded gateway and the daemon.

Protobuf messages never leave the transport (``convert.py``); everything
above it speaks these plain, immutable dataclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal


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


class PrivacyTier(StrEnum):
    """Where a request's data may go, strictest first.

    sovereign: this host and endpoints declared private (loopback, Unix sockets, private ranges of
    providers declared ``private``); private: sovereign plus allow-listed dedicated endpoints;
    standard: any configured provider.  Tiers only tighten: the strictest of the global setting,
    the caller key's ceiling and the request's own ask wins.
    """

    SOVEREIGN = "sovereign"
    PRIVATE = "private"
    STANDARD = "standard"

    @property
    def rank(self) -> int:
        """0 for the strictest."""
        return _TIER_ORDER.index(self)

    def tightest(self, other: PrivacyTier | None) -> PrivacyTier:
        return self if other is None or self.rank <= other.rank else other


_TIER_ORDER: tuple[PrivacyTier, ...] = (PrivacyTier.SOVEREIGN, PrivacyTier.PRIVATE, PrivacyTier.STANDARD)


#: How a conversation longer than its model's window is made to fit (``ChatOptions.context_strategy``).
#: error: refuse (OUT_OF_RANGE with the numbers); sliding_window: drop the oldest turns;
#: middle_out: keep the first and the latest turns, drop from the middle. The system prompt always stays.
CONTEXT_STRATEGIES: tuple[str, ...] = ("error", "sliding_window", "middle_out")


@dataclass(frozen=True, slots=True)
class Truncation:
    """What the context stage dropped so a conversation fits its model's window."""

    strategy: str
    #: Indices, in the request's messages, of the messages left out.
    dropped_messages: list[int]
    prompt_tokens_before: int
    prompt_tokens_after: int
    window: int
    #: Tokens kept free for the answer (max_tokens, else the model's max output, else a setting).
    reserve: int
    #: The counts are estimates (no tokenizer is known for the model).
    estimated: bool = False

    def summary(self) -> str:
        """One line a person reads (logs, trailing metadata)."""
        kind = "~" if self.estimated else ""
        return (
            f"{self.strategy}: dropped messages {_ranges(self.dropped_messages)} ({len(self.dropped_messages)}); "
            f"prompt {kind}{self.prompt_tokens_before} -> {kind}{self.prompt_tokens_after} tokens "
            f"+ {self.reserve} reserved <= window {self.window}"
        )


def _ranges(indices: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` as ``1-3,7``."""
    parts: list[str] = []
    start = prev = None
    for i in sorted(indices):
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = i
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(parts)


@dataclass(frozen=True, slots=True)
class Failover:
    """A stream resumed on another candidate after its upstream failed mid-answer.

    As a stream event it sits at the seam: the text before it came from ``from_candidate``, the text
    after it from ``to_candidate``, and together they read as one answer (the overlap the new leg
    repeated is removed).  ``at_char`` counts the characters (code points) of answer text sent
    before the seam; ``reason`` is the failure that cut the first leg.
    """

    from_candidate: str
    to_candidate: str
    at_char: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Notes:
    """What the gateway did to a request on its way, so nothing changes behind the caller's back.

    ``dropped_parameters``: generation parameters the model cannot take, dropped under
    ``parameters.policy = "warn"``; ``truncation``: what was left out to fit the context window;
    ``budget_warning``: the budgets this call brought near their limit; ``cache_hits``: the items
    (inputs, pairs, the one answer) served from the response cache instead of computed; ``retries``:
    tries again after transient upstream failures; ``failed_over``: the route's candidates left, in order;
    ``failovers``: streams resumed mid-answer on another candidate.
    Later stages add their facts here (failover, cache hits, budget warnings) rather than inventing
    another side channel.
    """

    dropped_parameters: list[str] = field(default_factory=list)
    truncation: Truncation | None = None
    #: Budgets this call brought to or past their warning threshold (``budget.warn_at``), one line.
    budget_warning: str = ""
    #: Items of this call answered from the response cache (0: none; a chat answer counts as one).
    cache_hits: int = 0
    #: Tries again after transient upstream failures (connect errors, 5xx, 429, overloads).
    retries: int = 0
    #: The route's candidates ("provider/model") the call moved past, in the order it left them.
    failed_over: list[str] = field(default_factory=list)
    #: Streams resumed mid-answer on another candidate (the same facts as the stream's Failover events).
    failovers: list[Failover] = field(default_factory=list)
    #: The local candidate whose queue reached the route's ``spill_at``, so another answered ("" : none).
    spilled_from: str = ""

    def __bool__(self) -> bool:
        return (
            bool(self.dropped_parameters)
            or self.truncation is not None
            or bool(self.budget_warning)
            or self.cache_hits > 0
            or bool(self.retries)
            or bool(self.failed_over)
            or bool(self.failovers)
            or bool(self.spilled_from)
        )


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
    notes: Notes = field(default_factory=Notes)


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
    #: The model store: content address (the revision), verification, signature state, encrypted.
    revision: str = ""
    verification: str = ""
    signature: str = ""
    encrypted: bool = False
    #: The micro-batcher: requests waiting now; mean and largest rows per batch run so far.
    queued: int = 0
    mean_batch_size: float = 0.0
    largest_batch: int = 0


@dataclass(frozen=True, slots=True)
class SwapResult:
    """What a model swap did (Admin.SwapModel, ``ratatoskr models swap``)."""

    model: str
    #: The content address served before the swap ("" when the model had never been loaded).
    old_revision: str
    #: The content address serving new calls now.
    new_revision: str
    #: "beside": the new revision loaded beside the old one, calls switched, the old one drained;
    #: "queued": the budget holds only one, so calls waited while the old one drained and the new
    #: one loaded; "loaded": the model was not loaded, so it was loaded; "unchanged": the files on
    #: disk are the revision already serving.
    mode: str
    message: str = ""


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
    #: Circuit breakers by "provider/model": "closed", "half_open" or "open".
    breakers: dict[str, str] = field(default_factory=dict)
    #: The configuration generation serving new calls: 1 at start, one more per applied reload.
    config_generation: int = 0
    #: sha256 (hex) of the configuration file that generation was read from ("" without a file).
    config_sha256: str = ""
    #: Calls in flight and limits (0: none) per bulkhead: "local" and "providers.NAME".
    bulkhead_in_flight: dict[str, int] = field(default_factory=dict)
    bulkhead_limits: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One budget in its current window (GetBudget, ``ratatoskr budget``); amounts are exact USD."""

    #: "global", "caller:NAME" or "model:PATTERN".
    scope: str
    #: "day:2026-12-02" or "month:2026-12", dates in the daemon's budget.timezone.
    window: str
    limit_usd: Decimal
    spent_usd: Decimal
    reserved_usd: Decimal
    #: ISO 8601 instant the window ends (when a refused caller may try again).
    window_ends_at: str


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did: applied whole or refused whole (``message`` says why)."""

    applied: bool
    #: Settings that changed and serve every call started from now on.
    changed: list[str]
    #: Settings that changed in the file but keep their running value until a restart.
    needs_restart: list[str]
    message: str = ""
    #: The configuration generation serving new calls (1 at start; unchanged when refused).
    generation: int = 0
    #: sha256 (hex) of the configuration file that generation was read from ("" without a file).
    config_sha256: str = ""


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
    notes: Notes = field(default_factory=Notes)


@dataclass(frozen=True, slots=True)
class ClassifyResult:
    """Candidate labels sorted by score, highest first; ``strategy`` is "nli" or "embedding"."""

    scores: list[LabelScore]
    model: str
    strategy: str
    usage: Usage = field(default_factory=Usage)
    timing: Timing = field(default_factory=Timing)
    notes: Notes = field(default_factory=Notes)


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
    #: True when the counts are estimates (no tokenizer is known for the model), never silently.
    estimated: bool = False


# -- chat -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    """A conversation as the model's chat template renders it, and its size in tokens."""

    text: str
    tokens: int
    #: Where the template came from, e.g. "SmolLM2-135M-Instruct.Q4_1.gguf" or "tokenizer_config.json:tool_use".
    template: str
    #: True when ``tokens`` is an estimate (no tokenizer is known for the model), never silently.
    tokens_estimated: bool = False
    timing: Timing = field(default_factory=Timing)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model asked for; ``arguments`` is the JSON text as the model wrote it."""

    id: str
    name: str
    arguments: str = ""
    type: str = "function"


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    name: str = ""
    tool_call_id: str = ""


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    name: str
    description: str = ""
    #: JSON Schema of the arguments.
    parameters: dict[str, Any] = field(default_factory=dict)
    strict: bool = False


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """``mode`` "function" forces a call of ``function``; the others are the usual auto/none/required."""

    mode: Literal["auto", "none", "required", "function"]
    function: str = ""


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"] = "text"
    schema_name: str = ""
    json_schema: dict[str, Any] | None = None
    strict: bool = False


@dataclass(frozen=True, slots=True)
class ReasoningOptions:
    effort: str = ""
    max_tokens: int | None = None
    exclude: bool = False


@dataclass(frozen=True, slots=True)
class ChatOptions:
    """Generation parameters; ``None`` leaves the model's default, never a value the caller did not give."""

    model: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = field(default_factory=list)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    tools: list[ToolDefinition] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    reasoning: ReasoningOptions | None = None
    parallel_tool_calls: bool | None = None
    #: What to do when the conversation does not fit the model's window (one of CONTEXT_STRATEGIES);
    #: "" takes the configured default (``context.strategy``). Not a generation parameter: the gateway acts on it.
    context_strategy: str = ""
    #: Streaming failover mid-answer: None takes the configured default (``failover.enabled``), False
    #: opts this request out (a stream cut mid-answer fails with the upstream's status). Not a
    #: generation parameter: the gateway acts on it.
    stream_failover: bool | None = None
    #: Merged into the provider's request body as is: the escape hatch for provider-only fields.
    raw_provider_options: dict[str, Any] = field(default_factory=dict)


#: Generation parameters: every ChatOptions field but the model and the raw escape hatch. Policy,
#: registry, presets and adapters derive their lists from this, so a new option is added once.
GENERATION_PARAMETERS: tuple[str, ...] = tuple(
    f.name
    for f in fields(ChatOptions)
    if f.name not in ("model", "raw_provider_options", "context_strategy", "stream_failover")
)
#: The numeric ones: they travel as plain numbers on every wire format that carries them.
NUMERIC_PARAMETERS: tuple[str, ...] = tuple(
    f.name for f in fields(ChatOptions) if str(f.type).replace(" ", "") in ("float|None", "int|None")
)


@dataclass(frozen=True, slots=True)
class ContentDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    index: int
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    index: int


@dataclass(frozen=True, slots=True)
class UsageEvent:
    usage: Usage


@dataclass(frozen=True, slots=True)
class Done:
    """The last event of every successful stream."""

    finish_reason: str
    timing: Timing = field(default_factory=Timing)
    provider: str = ""
    model: str = ""
    notes: Notes = field(default_factory=Notes)


ChatEvent = ContentDelta | ReasoningDelta | ToolCallStart | ToolCallDelta | ToolCallEnd | UsageEvent | Done | Failover


@dataclass(frozen=True, slots=True)
class ChatResult:
    message: Message
    finish_reason: str
    usage: Usage = field(default_factory=Usage)
    timing: Timing = field(default_factory=Timing)
    provider: str = ""
    model: str = ""
    reasoning: str = ""
    notes: Notes = field(default_factory=Notes)


@dataclass(frozen=True, slots=True)
class GenerateResult:
    text: str
    finish_reason: str
    usage: Usage = field(default_factory=Usage)
    timing: Timing = field(default_factory=Timing)
    provider: str = ""
    model: str = ""
    notes: Notes = field(default_factory=Notes)


# -- models -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model callers can name: ``id`` is what goes in ``model`` (``local/NAME`` or ``provider/model``)."""

    id: str
    provider: str
    tasks: list[Task]
    local: bool
    description: str = ""
    aliases: list[str] = field(default_factory=list)
    #: False for a model known only from the catalogue: no configured provider serves it here.
    routable: bool = True
    #: Local models: content address "blake3:<hex>" (the revision), "verified" / "unverified" /
    #: "skipped", signature state ("valid", "untrusted", "unsigned", "unchecked"), encrypted at rest.
    revision: str = ""
    verification: str = ""
    signature: str = ""
    encrypted: bool = False
    #: Its circuit breaker: "closed", "half_open", "open"; "" before any call (local models have none).
    breaker: str = ""


@dataclass(frozen=True, slots=True)
class ParameterAvailability:
    """What a caller may do with one generation parameter on one model and provider."""

    availability: Literal["mutable", "read_only", "opaque", "unsupported"]
    min: float | None = None
    max: float | None = None
    default: float | None = None
    #: For read_only: the value the model always uses.
    value: str = ""


@dataclass(frozen=True, slots=True)
class Pricing:
    """US dollars per million tokens."""

    input_per_million: float = 0.0
    output_per_million: float = 0.0
    cached_input_per_million: float = 0.0


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    info: ModelInfo
    context_window: int = 0
    max_output_tokens: int = 0
    embedding_dimension: int = 0
    max_sequence_length: int = 0
    labels: list[str] = field(default_factory=list)
    #: "local" (a model's manifest), "embedded" (the shipped catalogue), "live" (a provider just now).
    source: str = ""
    parameters: dict[str, ParameterAvailability] = field(default_factory=dict)
    pricing: Pricing | None = None
    tokenizer_family: str = ""
    #: Local signed models: the signer's key id and key kind.
    signed_by: str = ""
    signature_algorithm: str = ""
