"""Model metadata: the embedded catalogue merged with live data from OpenRouter and Ollama.

The embedded catalogue answers at once and offline; live data (OpenRouter's
``/api/v1/models``, each Ollama's ``/api/tags`` and ``/api/show``) is newer
and wins where both know a model.  A live record that leaves a fact out
(Ollama has no prices or tokenizer names; OpenRouter may not know a maximum
output) takes it from the embedded record of the same model.

Snapshot semantics: live data sits in one immutable :class:`LiveTable`.  A
refresh fetches everything first, builds a complete new table and swaps it
in with a single assignment, so a reader (``lookup``, ``records``, ``live``)
sees either the whole old table or the whole new one, never a mix, and a
table a reader holds never changes under it.  A source that fails keeps the
data it had; the failure is logged and reported, never raised.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import httpx

from ratatoskr_server.config import HttpSettings
from ratatoskr_server.net.client import UpstreamClient
from ratatoskr_server.net.egress import EgressPolicy, EgressRefused
from ratatoskr_server.net.http import build_client
from ratatoskr_server.registry.models import (
    KNOWN_PARAMETERS,
    ModelRecord,
    ParameterSpec,
    Pricing,
    canonical_decimal,
    parse_catalogue,
    per_token_to_per_million,
)

log = logging.getLogger(__name__)

CATALOGUE_RESOURCE: Final = "catalogue.json"
OPENROUTER: Final = "openrouter"

_OPAQUE: Final = ParameterSpec(availability="opaque")
_UNSUPPORTED: Final = ParameterSpec(availability="unsupported")
#: After a "-" or "_", what may follow a known name for the longer name to still be that model:
#: a date or version ("-2024-04-09", "-0125", "-8b"), or a word that names a build, not another model.
_SUFFIX_WORD = re.compile(
    r"^(?:\d.*|v\d.*|(?:q|fp|bf|int)\d.*|latest|preview|instruct|chat|it|hf|base|exp|beta|online|free|gguf|awq|gptq)$"
)
_TOKEN_END = re.compile(r"[-_:.@/]")
#: OpenRouter's ``architecture.tokenizer`` values that say nothing about the tokenizer.
_VAGUE_TOKENIZERS: Final = frozenset({"", "other", "router"})
#: Ollama ``parameters`` (Modelfile PARAMETER lines) that carry a default for a known parameter.
_OLLAMA_DEFAULTS: Final = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "num_predict": "max_tokens",
}
_EMBEDDING_ARCHITECTURES: Final = frozenset({"bert", "nomic-bert", "xlm-roberta", "new"})
#: Cap on a model list, so a misbehaving upstream cannot make a refresh unbounded.
_MAX_MODELS: Final = 10_000


@dataclass(frozen=True)
class SourceReport:
    """What one source's refresh did: ``models`` is how many it now has (its old count when it failed).

    ``error`` says why a failed source failed; for a source that succeeded it
    names entries that were skipped as malformed, and is otherwise empty.
    """

    name: str
    ok: bool
    models: int
    error: str = ""


@dataclass(frozen=True)
class RefreshReport:
    """One :meth:`ModelRegistry.refresh`: a report per source that was asked, in the order asked."""

    sources: tuple[SourceReport, ...]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.sources)

    def source(self, name: str) -> SourceReport:
        for report in self.sources:
            if report.name == name:
                return report
        raise KeyError(name)


class LiveTable:
    """One generation of live data, immutable: a refresh replaces the table, it never edits one.

    ``openrouter``: OpenRouter's records (ids such as ``anthropic/claude-3.5-sonnet``);
    ``local``: per provider name, the records its Ollama server listed.
    """

    __slots__ = ("_local", "_local_index", "_openrouter", "_openrouter_index")

    def __init__(
        self,
        openrouter: Iterable[ModelRecord] = (),
        local: Mapping[str, Iterable[ModelRecord]] | None = None,
    ) -> None:
        self._openrouter = tuple(openrouter)
        self._local: Mapping[str, tuple[ModelRecord, ...]] = MappingProxyType(
            {provider: tuple(records) for provider, records in (local or {}).items()}
        )
        self._openrouter_index: Mapping[str, ModelRecord] = MappingProxyType(
            {r.id.lower(): r for r in self._openrouter}
        )
        self._local_index: Mapping[str, Mapping[str, ModelRecord]] = MappingProxyType(
            {provider: MappingProxyType(_name_index(records)) for provider, records in self._local.items()}
        )

    @property
    def openrouter(self) -> tuple[ModelRecord, ...]:
        return self._openrouter

    @property
    def local(self) -> Mapping[str, tuple[ModelRecord, ...]]:
        return self._local

    def find_local(self, provider: str, model: str) -> ModelRecord | None:
        """``provider``'s record named ``model`` (id or alias, any case); Ollama's ``:latest`` may be left off."""
        index = self._local_index.get(provider)
        if index is None:
            return None
        key = model.lower()
        return index.get(key) or (index.get(key + ":latest") if ":" not in key else None)

    def find_openrouter(self, model: str) -> ModelRecord | None:
        return self._openrouter_index.get(model.lower())

    def __len__(self) -> int:
        return len(self._openrouter) + sum(len(r) for r in self._local.values())


def _name_index(records: Iterable[ModelRecord]) -> dict[str, ModelRecord]:
    index: dict[str, ModelRecord] = {}
    for record in records:
        for name in record.names():
            index.setdefault(name, record)
    return index


#: Distinct names ``match_embedded`` remembers before it starts over.
_MAX_MATCHED = 4096


class ModelRegistry:
    """Answers "what is this model?" for the policy layer: context window, prices, parameters, tokenizer.

    Resolution order of :meth:`lookup`, first hit wins:

    a. live records of that provider (its Ollama ``/api/tags``), by name; ``llama3`` finds ``llama3:latest``;
    b. live OpenRouter records, by exact id (``anthropic/claude-3.5-sonnet``), whatever the provider;
    c. embedded records, by id or alias;
    d. embedded records, by the name without its ``vendor/`` prefix (``openai/gpt-4o`` → ``gpt-4o``);
    e. embedded records, by the longest id or alias the name starts with, followed by ``:`` or ``@``
       (``llama3:8b``), or by ``-``/``_`` and a date, version or build word
       (``gpt-4-turbo-2024-04-09``, ``claude-3-opus-20240229``, ``llama-3-8b-instruct``).  Anything
       else after ``-`` is another model (``mistral-large`` is not ``mistral``), so it is not guessed.

    Names are compared case-insensitively.
    """

    def __init__(self, embedded: Iterable[ModelRecord]) -> None:
        self._embedded = tuple(embedded)
        self._names = _name_index(self._embedded)
        # Longest first, so the first prefix that fits is the most specific one.
        self._prefixes = sorted(self._names, key=len, reverse=True)
        #: ``match_embedded``'s answers: the embedded records never change, and a name that is in
        #: none of them (a self-hosted model, say) otherwise costs a scan of every prefix per call.
        self._matched: dict[str, ModelRecord | None] = {}
        self._live = LiveTable()

    @classmethod
    def embedded(cls) -> ModelRegistry:
        """A registry over the catalogue shipped inside the package, with no live data yet."""
        resource = resources.files(__package__ or "ratatoskr_server.registry").joinpath(CATALOGUE_RESOURCE)
        origin = f"packaged {CATALOGUE_RESOURCE}"
        return cls(parse_catalogue(resource.read_bytes(), origin=origin))

    @classmethod
    def from_file(cls, path: str | Path) -> ModelRegistry:
        """A registry over another catalogue file in the same schema (a site's own, or a test's)."""
        file = Path(path)
        return cls(parse_catalogue(file.read_bytes(), origin=str(file)))

    # ---- reading -------------------------------------------------------------------------------

    @property
    def live(self) -> LiveTable:
        """The current live table; it stays as it is even after a refresh swaps in a newer one."""
        return self._live

    @property
    def embedded_records(self) -> tuple[ModelRecord, ...]:
        return self._embedded

    def lookup(self, provider: str, model: str) -> ModelRecord | None:
        """The record for ``model`` as served by ``provider`` (see the class docstring for the order).

        ``provider`` is the provider's configured name, the key it had in
        :meth:`refresh`'s ``ollama`` mapping; ``None`` when nothing fits.
        """
        live = self._live  # one table for the whole lookup, even if a refresh swaps meanwhile
        key = model.strip().lower()
        if not key:
            return None
        return live.find_local(provider, key) or live.find_openrouter(key) or self.match_embedded(key)

    def match_embedded(self, model: str) -> ModelRecord | None:
        """Steps c-e of :meth:`lookup`: the embedded record a model name denotes, if any."""
        try:
            return self._matched[model]
        except KeyError:
            pass
        if len(self._matched) >= _MAX_MATCHED:  # names come from callers: the memory stays bounded
            self._matched.clear()
        found = self._matched[model] = self._match_embedded(model)
        return found

    def _match_embedded(self, model: str) -> ModelRecord | None:
        key = model.strip().lower()
        if key in self._names:
            return self._names[key]
        bare = key.rsplit("/", 1)[-1]
        if bare in self._names:
            return self._names[bare]
        for candidate in dict.fromkeys((key, bare)):
            for name in self._prefixes:
                if _extends(candidate, name):
                    return self._names[name]
        return None

    def records(self) -> list[ModelRecord]:
        """Every known model, from one snapshot: embedded ones no live record names, then all live ones.

        A live record replaces an embedded one when one of its names (id or
        alias) is one of the embedded record's names (Ollama's
        ``smollm2:135m`` is the catalogue's ``smollm2-135m``, which lists that
        alias).  Ollama records of two
        providers are both listed, even under the same name.
        """
        live = self._live
        live_records = [*live.openrouter, *(r for records in live.local.values() for r in records)]
        claimed = {name for r in live_records for name in r.names()}
        embedded = [r for r in self._embedded if not claimed.intersection(r.names())]
        return embedded + live_records

    # ---- writing -------------------------------------------------------------------------------

    def set_live(
        self,
        *,
        openrouter: Iterable[ModelRecord] | None = None,
        local: Mapping[str, Iterable[ModelRecord]] | None = None,
    ) -> None:
        """Swap in live records from elsewhere (a cache file, a test); ``None`` keeps that part as it is."""
        current = self._live
        self._live = LiveTable(
            current.openrouter if openrouter is None else openrouter,
            current.local if local is None else local,
        )

    async def refresh(
        self,
        *,
        openrouter_url: str | None,
        ollama: Mapping[str, str],
        http: HttpSettings,
        egress: EgressPolicy | None = None,
    ) -> RefreshReport:
        """Fetch every source, then swap in one new live table.

        ``openrouter_url`` is the full URL of OpenRouter's ``/api/v1/models``
        (``None`` or empty: not fetched, and its data dropped); ``ollama`` maps
        provider names to their base URLs (providers no longer named are
        dropped).  A failing source (HTTP error, bad JSON, unexpected shape,
        timeout) keeps its previous data, is logged as a warning and is
        reported; it never raises.  Every source is bounded by
        ``http.total_timeout_s``.  Connections pass ``egress`` (the global privacy tier): a source
        the tier forbids is reported as refused and sent nothing.
        """
        headers = {"Accept": "application/json"}
        async with build_client(http, base_url="", headers=headers, egress=egress) as client:
            limit = http.total_timeout_s
            openrouter, local = await asyncio.gather(
                _guarded(self._fetch_openrouter(client, openrouter_url), limit) if openrouter_url else _absent(),
                asyncio.gather(*(_guarded(self._fetch_ollama(client, base), limit) for base in ollama.values())),
            )
        return self._swap(openrouter, dict(zip(ollama, local, strict=True)))

    def _swap(self, openrouter: _Outcome | None, ollama: Mapping[str, _Outcome]) -> RefreshReport:
        # No await from here to the assignment: the table read as "old" is the one being replaced,
        # so a source that failed keeps the freshest data it had, even after a concurrent refresh.
        current = self._live
        reports: list[SourceReport] = []

        def settle(name: str, outcome: _Outcome, old: tuple[ModelRecord, ...]) -> tuple[ModelRecord, ...]:
            if isinstance(outcome, str):
                log.warning(
                    "model registry: refreshing %s failed (%s); keeping its %d earlier models", name, outcome, len(old)
                )
                reports.append(SourceReport(name=name, ok=False, models=len(old), error=outcome))
                return old
            records, skipped = outcome
            note = f"skipped malformed entries: {', '.join(skipped)}" if skipped else ""
            if skipped:
                log.warning("model registry: %s: %s", name, note)
            reports.append(SourceReport(name=name, ok=True, models=len(records), error=note))
            return records

        openrouter_records = () if openrouter is None else settle(OPENROUTER, openrouter, current.openrouter)
        local = {name: settle(name, outcome, current.local.get(name, ())) for name, outcome in ollama.items()}
        self._live = LiveTable(openrouter_records, local)
        return RefreshReport(sources=tuple(reports))

    # ---- OpenRouter ----------------------------------------------------------------------------

    async def _fetch_openrouter(self, client: UpstreamClient, url: str) -> _Fetched:
        document = await _request_json(client, "GET", url)
        data = document.get("data") if isinstance(document, dict) else None
        if not isinstance(data, list):
            raise _BadAnswer('expected {"data": [...]}')
        records: list[ModelRecord] = []
        skipped: list[str] = []
        for index, entry in enumerate(data[:_MAX_MODELS]):
            record = self._openrouter_record(entry) if isinstance(entry, dict) else None
            if record is None:
                ident = entry.get("id") if isinstance(entry, dict) else None
                skipped.append(ident if isinstance(ident, str) and ident else f"#{index}")
            else:
                records.append(record)
        return tuple(records), tuple(skipped)

    def _openrouter_record(self, entry: dict[str, Any]) -> ModelRecord | None:
        ident = entry.get("id")
        if not isinstance(ident, str) or not ident.strip():
            return None
        embedded = self.match_embedded(ident)
        top = _mapping(entry.get("top_provider"))
        architecture = _mapping(entry.get("architecture"))
        prices = _mapping(entry.get("pricing"))
        context = _count(entry.get("context_length")) or _count(top.get("context_length"))
        max_output = _count(top.get("max_completion_tokens")) or (embedded.max_output_tokens if embedded else 0)
        prompt, completion = _price(prices.get("prompt")), _price(prices.get("completion"))
        pricing = (
            Pricing(
                input_per_million=prompt,
                output_per_million=completion,
                cached_input_per_million=_price(prices.get("input_cache_read")),
            )
            if prompt is not None and completion is not None
            else None
        )
        supported = entry.get("supported_parameters")
        parameters = (
            _openrouter_parameters([str(p) for p in supported], max_output, embedded)
            if isinstance(supported, list)
            else {}
        )
        outputs = architecture.get("output_modalities")
        tasks = ["embed"] if isinstance(outputs, list) and "embeddings" in outputs else ["chat"]
        description = entry.get("description")
        try:
            record = ModelRecord(
                id=ident,
                context_window=context,
                max_output_tokens=max_output,
                pricing=pricing,
                tokenizer_family=_tokenizer_family(architecture.get("tokenizer"), embedded),
                parameters=parameters,
                tasks=tasks,
                description=description if isinstance(description, str) else "",
                source="live",
            )
        except ValueError:
            return None
        return _fill_gaps(record, embedded)

    # ---- Ollama --------------------------------------------------------------------------------

    async def _fetch_ollama(self, client: UpstreamClient, base_url: str) -> _Fetched:
        base = base_url.rstrip("/")
        tags = await _request_json(client, "GET", f"{base}/api/tags")
        models = tags.get("models") if isinstance(tags, dict) else None
        if not isinstance(models, list):
            raise _BadAnswer('expected {"models": [...]} from /api/tags')
        records: list[ModelRecord] = []
        skipped: list[str] = []
        # One at a time: a local server, a handful of models, and no burst on a machine that is also inferring.
        for index, entry in enumerate(models[:_MAX_MODELS]):
            name = _mapping(entry).get("name") or _mapping(entry).get("model")
            if not isinstance(name, str) or not name:
                skipped.append(f"#{index}")
                continue
            show = await _request_json(client, "POST", f"{base}/api/show", json={"model": name})
            if not isinstance(show, dict):
                raise _BadAnswer(f"expected an object from /api/show for {name}")
            records.append(self._ollama_record(name, show))
        return tuple(records), tuple(skipped)

    def _ollama_record(self, name: str, show: dict[str, Any]) -> ModelRecord:
        embedded = self.match_embedded(name)
        info = _mapping(show.get("model_info"))
        details = _mapping(show.get("details"))
        general = info.get("general.architecture")
        architecture = general if isinstance(general, str) else str(details.get("family") or "")
        context = _count(info.get(f"{architecture}.context_length"))
        if not context:  # an architecture whose key Ollama spells differently: any *.context_length
            context = next((_count(v) for k, v in info.items() if str(k).endswith(".context_length")), 0)
        listed = show.get("capabilities")
        capabilities = [str(c) for c in listed] if isinstance(listed, list) else None
        if capabilities is not None:
            tasks = [t for c, t in (("completion", "chat"), ("embedding", "embed")) if c in capabilities] or ["chat"]
        else:
            tasks = ["embed"] if architecture in _EMBEDDING_ARCHITECTURES else ["chat"]
        parameters = _ollama_parameters(show.get("parameters"), capabilities, context, tasks)
        aliases = [name[: -len(":latest")]] if name.endswith(":latest") else []
        record = ModelRecord(
            id=name,
            aliases=aliases,
            context_window=context,
            pricing=Pricing.free(),
            parameters=parameters,
            tasks=tasks,
            description=_ollama_description(details, embedded),
            source="live",
        )
        return _fill_gaps(record, embedded)


# ---- fetching helpers ------------------------------------------------------------------------------

#: A source's records and the entries it skipped as malformed.
_Fetched = tuple[tuple[ModelRecord, ...], tuple[str, ...]]
#: What fetching a source came to: its records, or why it failed.
_Outcome = _Fetched | str


class _BadAnswer(Exception):
    """An upstream answered, but not with what its protocol promises."""


async def _request_json(client: UpstreamClient, method: str, url: str, **kwargs: Any) -> Any:
    response = await client.request(method, url, **kwargs)
    response.raise_for_status()
    try:
        # Decimals, never floats: a price must not pick up binary rounding on its way in.
        return json.loads(response.content, parse_float=Decimal)
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError both
        raise _BadAnswer(f"bad JSON from {response.request.url.path}: {err}") from None


async def _absent() -> None:
    """Stands in for a source that is not configured, so one gather keeps the sources in order."""


async def _guarded(job: Awaitable[_Fetched], total_timeout_s: float) -> _Outcome:
    """The job's result, or why it failed in words fit for a log (status, path, error class; no URL, no key)."""
    try:
        async with asyncio.timeout(total_timeout_s):
            return await job
    except TimeoutError:
        return f"timed out after {total_timeout_s:g} s"
    except httpx.HTTPStatusError as err:
        return f"HTTP {err.response.status_code} from {err.request.url.path}"
    except httpx.TimeoutException as err:
        return f"timed out ({type(err).__name__})"
    except httpx.HTTPError as err:
        return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    except (_BadAnswer, EgressRefused) as err:
        return str(err)
    except Exception as err:  # a refresh must never take the daemon down; the old data stays
        log.debug("model registry: unexpected error in a refresh", exc_info=True)
        return f"unexpected {type(err).__name__}: {err}"


# ---- conversion helpers --------------------------------------------------------------------------


def _extends(model: str, name: str) -> bool:
    """Whether ``model`` is ``name`` plus a tag, date, version or build suffix (see ModelRegistry)."""
    if len(model) <= len(name) or not model.startswith(name):
        return False
    separator, rest = model[len(name)], model[len(name) + 1 :]
    if separator in ":@":
        return True
    if separator in "-_":
        return bool(_SUFFIX_WORD.match(_TOKEN_END.split(rest, maxsplit=1)[0]))
    return False


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _count(value: Any) -> int:
    """A non-negative integer from JSON (int, or an integral Decimal); 0 for anything else."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return max(int(value), 0)
    return 0


def _price(value: Any) -> Decimal | None:
    """OpenRouter's USD-per-token value → USD per million tokens; ``None`` when unknown."""
    if isinstance(value, str):
        return per_token_to_per_million(value)
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        decimal = Decimal(value)
        return canonical_decimal(decimal * 1_000_000) if decimal.is_finite() and decimal >= 0 else None
    return None


def _tokenizer_family(value: Any, embedded: ModelRecord | None) -> str:
    family = value.strip().lower() if isinstance(value, str) else ""
    if family in _VAGUE_TOKENIZERS:
        return ""
    # OpenRouter says "GPT" for both of OpenAI's encodings; the catalogue knows which one.
    if family == "gpt" and embedded and embedded.tokenizer_family in ("cl100k", "o200k"):
        return embedded.tokenizer_family
    return family


def _openrouter_parameters(
    supported: list[str], max_output: int, embedded: ModelRecord | None
) -> dict[str, ParameterSpec]:
    """Listed parameters: the catalogue's spec where it has a real one, else opaque; unlisted: unsupported."""
    listed = set(supported)
    if "include_reasoning" in listed:
        listed.add("reasoning")
    specs: dict[str, ParameterSpec] = {}
    for name in KNOWN_PARAMETERS:
        known = embedded.parameters.get(name) if embedded else None
        if name not in listed:
            specs[name] = _UNSUPPORTED
        elif name == "max_tokens" and max_output:
            specs[name] = ParameterSpec(availability="mutable", min=1, max=max_output)
        elif known is not None and known.availability in ("mutable", "read_only"):
            specs[name] = known
        else:
            specs[name] = _OPAQUE
    return specs


def _ollama_parameters(
    text: Any, capabilities: list[str] | None, context: int, tasks: list[str]
) -> dict[str, ParameterSpec]:
    """What Ollama's ``options`` accept, with the model's own defaults from its Modelfile PARAMETER lines."""
    if "chat" not in tasks:
        return {}
    defaults: dict[str, float] = {}
    for line in text.splitlines() if isinstance(text, str) else ():
        key, _, value = line.strip().partition(" ")
        target = _OLLAMA_DEFAULTS.get(key)
        if target is None:
            continue
        try:
            defaults[target] = float(value.strip())
        except ValueError:
            continue
    if defaults.get("max_tokens", 1) <= 0:  # num_predict -1 / -2: "until done" / "fill the context"
        defaults.pop("max_tokens")

    def ranged(name: str, low: float | None, high: float | None) -> ParameterSpec:
        try:
            return ParameterSpec(availability="mutable", min=low, max=high, default=defaults.get(name))
        except ValueError:  # a Modelfile default outside the range: keep the range, drop the default
            return ParameterSpec(availability="mutable", min=low, max=high)

    def capable(capability: str) -> ParameterSpec:
        if capabilities is None:
            return _OPAQUE
        return ParameterSpec(availability="mutable") if capability in capabilities else _UNSUPPORTED

    return {
        "temperature": ranged("temperature", 0, 2),
        "top_p": ranged("top_p", 0, 1),
        "top_k": ranged("top_k", 0, None),
        "max_tokens": ranged("max_tokens", 1, context or None),
        "stop": ParameterSpec(availability="mutable"),
        "frequency_penalty": ranged("frequency_penalty", -2, 2),
        "presence_penalty": ranged("presence_penalty", -2, 2),
        "seed": ranged("seed", None, None),
        "tools": capable("tools"),
        "tool_choice": _UNSUPPORTED,
        "response_format": ParameterSpec(availability="mutable"),
        "reasoning": capable("thinking"),
        "parallel_tool_calls": _UNSUPPORTED,
    }


def _ollama_description(details: Mapping[str, Any], embedded: ModelRecord | None) -> str:
    """The catalogue's words for the model, if it knows it, and what Ollama says about this copy of it."""
    facts = [str(details[k]) for k in ("family", "parameter_size", "quantization_level") if details.get(k)]
    served = "Served by Ollama" + (f" ({', '.join(facts)})" if facts else "") + "."
    return f"{embedded.description} {served}" if embedded and embedded.description else served


def _fill_gaps(record: ModelRecord, embedded: ModelRecord | None) -> ModelRecord:
    """``record`` with what it does not know taken from the catalogue's record of the same model."""
    if embedded is None:
        return record
    return record.model_copy(
        update={
            "context_window": record.context_window or embedded.context_window,
            "max_output_tokens": record.max_output_tokens or embedded.max_output_tokens,
            "pricing": embedded.pricing if record.pricing is None else record.pricing,
            "tokenizer_family": record.tokenizer_family or embedded.tokenizer_family,
            "description": record.description or embedded.description,
            "parameters": {**embedded.parameters, **record.parameters},
        }
    )
