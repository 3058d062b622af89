"""Generation parameters checked before dispatch, instead of silently dropped by an adapter.

For each parameter a caller set, its availability on (provider, model) is:
unsupported when the adapter's wire format cannot carry it or the upstream
rejected it recently; else what the model registry says (a range, a fixed
value, or unsupported); else opaque (accepted, range unknown).  Unsupported
parameters follow the policy (per provider, else global): ``warn`` drops
them, logs, and reports them in the response's trailing metadata;
``error`` refuses the call with INVALID_ARGUMENT; ``ignore`` sends them as
they are.  A value outside a known range is always INVALID_ARGUMENT, naming
the range.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import aclosing
from dataclasses import fields, replace
from typing import Any, Protocol

from ratatoskr_client.errors import InvalidArgument
from ratatoskr_client.types import NUMERIC_PARAMETERS, ChatEvent, ChatOptions, ParameterAvailability
from ratatoskr_server.config import Settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import Call, Result
from ratatoskr_server.pipeline.chain import Next, NextStream, Stage
from ratatoskr_server.registry import ModelRegistry, ParameterSpec
from ratatoskr_server.registry.models import KNOWN_PARAMETERS

log = logging.getLogger(__name__)

_NUMERIC = frozenset(NUMERIC_PARAMETERS)
_UNSUPPORTED = ParameterAvailability("unsupported")
_OPAQUE = ParameterAvailability("opaque")
_REJECTION_WORDS = re.compile(r"unsupported|not supported|unrecognized|unknown|not permitted|not allowed|extra inputs")

#: Remembered rejections kept at most; model names come from callers, so the table must be bounded.
MAX_REMEMBERED_REJECTIONS = 4096
#: Request-body fields the gateway builds from the request itself; raw_provider_options may not set them.
_RESERVED = frozenset({"model", "messages", "prompt", "system", "stream", "stream_options", "input"})
#: Typed parameters a raw option may carry instead, moved into ChatOptions so they are checked alike.
_LIFTABLE = _NUMERIC | {"stop", "max_completion_tokens"}


def parameters_set(options: ChatOptions) -> list[str]:
    """The parameters the caller gave a value (empty lists and None mean "left to the model")."""
    present = []
    for name in KNOWN_PARAMETERS:
        value = getattr(options, name)
        if value is not None and value != []:
            present.append(name)
    return present


def _finite(name: str, value: Any) -> None:
    """NaN and ±inf have no JSON form: refuse them here rather than fail in the HTTP client."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgument(f"{name}={value} is not a finite number")
    if isinstance(value, dict):
        for key, inner in value.items():
            _finite(f"{name}.{key}", inner)
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            _finite(f"{name}[{i}]", inner)


def lift_raw_options(options: ChatOptions) -> ChatOptions:
    """``raw_provider_options`` that cannot bypass the request or the checks.

    Keys the gateway builds itself (model, messages, stream …) are refused; a typed parameter given
    raw (``{"temperature": 3}``) moves into its field, where ranges, policy and budgets apply; one
    given both ways is refused as ambiguous; other typed parameters must use their field.
    """
    raw = options.raw_provider_options
    for name in parameters_set(options):
        _finite(name, getattr(options, name))
    if not raw:
        return options
    _finite("raw_provider_options", raw)
    reserved = sorted(_RESERVED & raw.keys())
    if reserved:
        raise InvalidArgument(
            f"raw_provider_options may not set {', '.join(reserved)}: the gateway builds "
            f"{'them' if len(reserved) > 1 else 'it'} from the request"
        )
    lifted: dict[str, Any] = {}
    rest = dict(raw)
    for key in sorted(raw.keys() & (_LIFTABLE | set(KNOWN_PARAMETERS))):
        name = "max_tokens" if key == "max_completion_tokens" else key
        if key not in _LIFTABLE:
            raise InvalidArgument(f"set {key} through its own option, not raw_provider_options")
        if name in lifted or getattr(options, name) not in (None, []):
            raise InvalidArgument(f"{key} is set both as an option and in raw_provider_options; set it once")
        value = rest.pop(key)
        number = int if name in ("max_tokens", "top_k", "seed") else int | float
        numeric = name in _NUMERIC and isinstance(value, number) and not isinstance(value, bool)
        if not (numeric or (name == "stop" and isinstance(value, list) and all(isinstance(v, str) for v in value))):
            raise InvalidArgument(f"raw_provider_options.{key} has the wrong type: {type(value).__name__}")
        lifted[name] = list(value) if name == "stop" else value
    return replace(options, raw_provider_options=rest, **lifted) if lifted else options


def _same(value: Any, fixed: str) -> bool:
    """A caller's value equals a read-only one: numerically when both are numbers (1.0 is "1")."""
    try:
        return float(value) == float(fixed)
    except (TypeError, ValueError):
        return str(value) == fixed


def _cleared(options: ChatOptions, names: list[str]) -> ChatOptions:
    defaults: dict[str, Any] = {}
    for f in fields(ChatOptions):
        if f.name in names:
            defaults[f.name] = [] if f.name in ("stop", "tools") else None
    return replace(options, **defaults)


class RejectionSink(Protocol):
    def rejected(self, provider: str, model: str, parameters: Iterable[str], seconds: float) -> None:
        """Tell the other replicas that ``parameters`` were refused, for ``seconds``."""


class ParameterGuard:
    def __init__(self, settings: Settings, rejected: dict[tuple[str, str, str], float] | None = None) -> None:
        self.settings = settings
        #: (provider, model, parameter) -> monotonic time until which it counts as unsupported.
        self._rejected: dict[tuple[str, str, str], float] = {} if rejected is None else rejected
        #: Where rejections are shared with other replicas (``state.backend = "redis"``), if anywhere.
        self.shared: RejectionSink | None = None

    def under(self, settings: Settings) -> ParameterGuard:
        """A guard reading ``settings`` that shares what upstreams rejected: each configuration's
        pipeline keeps its own policy while a reload cannot make an upstream forget a refusal."""
        guard = ParameterGuard(settings, self._rejected)
        guard.shared = self.shared
        return guard

    def learn(self, provider: str, model: str, parameter: str, seconds: float) -> None:
        """A rejection another replica saw: ``parameter`` counts as unsupported for ``seconds`` more."""
        key = (provider, model, parameter)
        until = time.monotonic() + seconds
        if key in self._rejected or len(self._rejected) < MAX_REMEMBERED_REJECTIONS:
            self._rejected[key] = max(until, self._rejected.get(key, 0.0))

    def policy_for(self, provider: str) -> str:
        entry = self.settings.providers.get(provider)
        if entry is not None and entry.parameter_policy is not None:
            return entry.parameter_policy
        return self.settings.parameters.policy

    def availability(
        self,
        provider: str,
        model: str,
        supported: frozenset[str],
        known: Mapping[str, ParameterAvailability],
    ) -> dict[str, ParameterAvailability]:
        """Every known parameter's availability on this provider and model, as GetModelMetadata shows it."""
        now = time.monotonic()
        return {name: self._available(name, provider, model, supported, known, now) for name in KNOWN_PARAMETERS}

    def _available(
        self,
        name: str,
        provider: str,
        model: str,
        supported: frozenset[str],
        known: Mapping[str, ParameterAvailability],
        now: float,
    ) -> ParameterAvailability:
        if name not in supported or self._rejected.get((provider, model, name), 0.0) > now:
            return _UNSUPPORTED
        return known.get(name, _OPAQUE)

    def check(
        self,
        options: ChatOptions,
        *,
        provider: str,
        model: str,
        supported: frozenset[str],
        known: Mapping[str, ParameterAvailability],
    ) -> tuple[ChatOptions, list[str]]:
        """``options`` fit for dispatch (unsupported parameters handled by the policy, ranges enforced),
        and the parameters it dropped, for the caller's notes."""
        options = lift_raw_options(options)
        given = parameters_set(options)
        if not given:  # nothing to judge: the table is read only for what a call sets
            return options, []
        now = time.monotonic()
        policy = self.policy_for(provider)
        unsupported: list[str] = []
        for name in given:
            spec = self._available(name, provider, model, supported, known, now)
            value = getattr(options, name)
            if spec.availability == "unsupported" or (
                spec.availability == "read_only" and spec.value and not _same(value, spec.value)
            ):
                unsupported.append(name)
            elif spec.availability == "mutable" and name in _NUMERIC:
                low, high = spec.min, spec.max
                if (low is not None and value < low) or (high is not None and value > high):
                    allowed = f"{'' if low is None else f'{low:g}'}..{'' if high is None else f'{high:g}'}"
                    raise InvalidArgument(
                        f"{name}={value:g} is out of range for model '{model}' on provider '{provider}': "
                        f"allowed {allowed}"
                    )
        if not unsupported or policy == "ignore":
            return options, []
        if policy == "error":
            raise InvalidArgument(
                f"parameter{'s' if len(unsupported) > 1 else ''} {', '.join(unsupported)} not supported by model "
                f"'{model}' on provider '{provider}' (parameters.policy = \"error\")"
            )
        log.warning(
            "dropped unsupported parameters",
            extra={"provider": provider, "model": model, "parameters": unsupported},
        )
        return _cleared(options, unsupported), unsupported

    def remember_rejection(self, provider: str, model: str, message: str, sent: ChatOptions) -> list[str]:
        """Parameters an upstream refused by name; they count as unsupported for a while."""
        if not _REJECTION_WORDS.search(message.lower()):
            return []
        named = [p for p in parameters_set(sent) if re.search(rf"\b{re.escape(p)}\b", message)]
        now = time.monotonic()
        until = now + self.settings.parameters.remember_rejections_s
        if named and len(self._rejected) + len(named) > MAX_REMEMBERED_REJECTIONS:
            self._rejected = {k: t for k, t in self._rejected.items() if t > now}  # forget the expired first
            while len(self._rejected) + len(named) > MAX_REMEMBERED_REJECTIONS:
                del self._rejected[next(iter(self._rejected))]  # then the oldest
        for name in named:
            self._rejected.pop((provider, model, name), None)  # re-inserted: it is the newest now
            self._rejected[(provider, model, name)] = until
        if named:
            log.info(
                "remembering rejected parameters", extra={"provider": provider, "model": model, "parameters": named}
            )
            if self.shared is not None:
                self.shared.rejected(provider, model, named, self.settings.parameters.remember_rejections_s)
        return named


def availability_of(spec: ParameterSpec) -> ParameterAvailability:
    return ParameterAvailability(spec.availability, spec.min, spec.max, spec.default, spec.value or "")


class _KnownParameters(Mapping[str, ParameterAvailability]):
    """A record's parameter specs as availabilities, each made when a call asks about it."""

    def __init__(self, specs: Mapping[str, ParameterSpec]) -> None:
        self._specs = specs

    def __getitem__(self, name: str) -> ParameterAvailability:
        return availability_of(self._specs[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


class ParamsStage(Stage):
    """The parameter check on the candidate a call goes to; upstream refusals are remembered.

    It runs per target (after the plan), because what a parameter means depends on where it goes.
    """

    def __init__(self, guard: ParameterGuard, registry: ModelRegistry) -> None:
        self.guard = guard
        self.registry = registry

    def checked(self, call: Call, ctx: RequestContext) -> Call:
        if call.options is None or call.target is None:
            return call
        provider, model = call.target.provider, call.target.model
        record = self.registry.lookup(provider.name, model)
        known = _KnownParameters(record.parameters) if record else {}
        options, dropped = self.guard.check(
            call.options, provider=provider.name, model=model, supported=provider.supported_parameters, known=known
        )
        ctx.note_dropped(dropped)
        return call if options is call.options else call.but(options=options)

    def _learn(self, call: Call, err: InvalidArgument) -> None:
        if call.options is not None and call.target is not None:
            self.guard.remember_rejection(call.target.provider.name, call.target.model, err.message, call.options)

    async def unary(self, call: Call, ctx: RequestContext, next: Next) -> Result:
        call = self.checked(call, ctx)
        try:
            return await next(call, ctx)
        except InvalidArgument as err:
            self._learn(call, err)
            raise

    async def stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        call = self.checked(call, ctx)
        events = next(call, ctx)
        try:
            async with aclosing(events):  # type: ignore[type-var]
                async for event in events:
                    yield event
        except InvalidArgument as err:
            self._learn(call, err)
            raise
