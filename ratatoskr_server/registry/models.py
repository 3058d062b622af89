"""The registry's schema: what is known about one model, validated the same way wherever it comes from.

The embedded ``catalogue.json`` and the records built from live sources
(OpenRouter, Ollama) go through these models, so a typo in the catalogue or
a surprise from an upstream fails here, loudly and with the record named,
instead of turning into a wrong budget or a rejected request later.

Prices are :class:`~decimal.Decimal` USD per million tokens and never pass
through ``float``: budgets add many small amounts, and ``0.1 + 0.2`` must
stay ``0.3``.  They are stored canonical (``Decimal("3")``, not
``Decimal("3.000000")``) so that equal prices print alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ratatoskr_client.types import GENERATION_PARAMETERS

Availability = Literal["mutable", "read_only", "opaque", "unsupported"]
Source = Literal["embedded", "live", "local"]

#: The request parameters the registry describes; policy checks a request's parameters against these.
KNOWN_PARAMETERS: Final[tuple[str, ...]] = GENERATION_PARAMETERS


class CatalogueError(ValueError):
    """A catalogue that does not match the schema; the message names the record and the field."""


def canonical_decimal(value: Decimal) -> Decimal:
    """``value`` without trailing zeros and never in exponent form: ``3.000000`` → ``3``, ``3E+1`` → ``30``."""
    if not value.is_finite():
        raise ValueError(f"{value} is not a finite number")
    if value == 0:
        return Decimal(0)
    normal = value.normalize()
    exponent = normal.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:
        normal = normal.quantize(Decimal(1))
    return normal


def per_token_to_per_million(text: str) -> Decimal | None:
    """USD per token as a decimal string (OpenRouter's unit) → USD per million tokens, exactly.

    ``None`` for what OpenRouter uses to say "unknown" or "varies" (``"-1"``,
    any negative) and for text that is not a number.
    """
    try:
        per_token = Decimal(text.strip())
    except (InvalidOperation, AttributeError):
        return None
    if not per_token.is_finite() or per_token < 0:
        return None
    return canonical_decimal(per_token * 1_000_000)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ParameterSpec(_Strict):
    """How a model treats one request parameter.

    - ``mutable``: the caller may set it, within ``min``..``max`` where given; ``default`` is the model's own.
    - ``read_only``: fixed by the model (``value``); sending another value is an error upstream.
    - ``opaque``: accepted, but the registry does not know the range; passed through unchecked.
    - ``unsupported``: the model rejects or ignores it, so policy refuses it before spending a call.
    """

    availability: Availability
    min: float | None = None
    max: float | None = None
    default: float | None = None
    value: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ParameterSpec:
        ranged = self.min is not None or self.max is not None or self.default is not None
        if ranged and self.availability != "mutable":
            raise ValueError(f"min/max/default apply only to mutable parameters, not {self.availability}")
        if self.value is not None and self.availability != "read_only":
            raise ValueError(f"value applies only to read_only parameters, not {self.availability}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        if self.default is not None:
            if self.min is not None and self.default < self.min:
                raise ValueError(f"default {self.default} is below min {self.min}")
            if self.max is not None and self.default > self.max:
                raise ValueError(f"default {self.default} is above max {self.max}")
        return self


class Pricing(_Strict):
    """USD per million tokens; ``cached_input_per_million`` is the prompt-cache hit price where there is one."""

    input_per_million: Decimal
    output_per_million: Decimal
    cached_input_per_million: Decimal | None = None

    @field_validator("input_per_million", "output_per_million", "cached_input_per_million", mode="before")
    @classmethod
    def _no_float(cls, value: Any) -> Any:
        # A float has already lost the exact price (0.1 is 0.1000000000000000055...): refuse it.
        if isinstance(value, bool | float):
            raise ValueError("a price must be a decimal string such as '0.15', not a float")
        return value

    @field_validator("input_per_million", "output_per_million", "cached_input_per_million")
    @classmethod
    def _canonical(cls, value: Decimal | None) -> Decimal | None:
        if value is None:
            return None
        if value < 0:
            raise ValueError(f"a price cannot be negative ({value})")
        return canonical_decimal(value)

    @classmethod
    def free(cls) -> Pricing:
        """Zero cost: models on this machine or the user's own server."""
        return cls(input_per_million=Decimal(0), output_per_million=Decimal(0), cached_input_per_million=None)


class ModelRecord(_Strict):
    """Everything the gateway knows about one model; zero, empty or ``None`` means unknown."""

    id: str = Field(min_length=1)
    #: Other names it answers to (provider spellings, Ollama tags); dated snapshots match by prefix anyway.
    aliases: list[str] = Field(default_factory=list)
    context_window: int = Field(default=0, ge=0)
    max_output_tokens: int = Field(default=0, ge=0)
    pricing: Pricing | None = None
    tokenizer_family: str = ""
    parameters: dict[str, ParameterSpec] = Field(default_factory=dict)
    tasks: list[str] = Field(default_factory=lambda: ["chat"])
    description: str = ""
    source: Source = "embedded"

    @field_validator("parameters")
    @classmethod
    def _known_parameters(cls, value: dict[str, ParameterSpec]) -> dict[str, ParameterSpec]:
        unknown = sorted(set(value) - set(KNOWN_PARAMETERS))
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(KNOWN_PARAMETERS)}")
        return value

    def names(self) -> list[str]:
        """The id and the aliases, lower-cased: the keys this record is found by."""
        return [self.id.lower(), *(a.lower() for a in self.aliases)]


def parse_catalogue(text: str | bytes, *, origin: str) -> list[ModelRecord]:
    """Validate a catalogue document (a JSON list of records) into records.

    Raises :class:`CatalogueError` naming ``origin``, the record (index and
    id) and the field, for: bad JSON, a record that breaks the schema, a
    price written as a JSON number instead of a decimal string, and a name
    (id or alias) that two records both claim, which would make lookups
    depend on file order.
    """
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise CatalogueError(f"{origin}: not valid JSON: {err}") from None
    if not isinstance(raw, list):
        raise CatalogueError(f"{origin}: must be a JSON list of model records, not {type(raw).__name__}")
    records: list[ModelRecord] = []
    owner: dict[str, str] = {}
    for index, item in enumerate(raw):
        where = _where(origin, index, item)
        if isinstance(item, Mapping) and isinstance(item.get("pricing"), Mapping):
            for key, price in item["pricing"].items():
                if price is not None and not isinstance(price, str):
                    raise CatalogueError(
                        f"{where}: field pricing.{key}: write prices as decimal strings, not {price!r}"
                    )
        try:
            record = ModelRecord.model_validate(item)
        except ValidationError as err:
            problems = "; ".join(
                f"field {'.'.join(str(p) for p in e['loc']) or '(record)'}: {e['msg']}" for e in err.errors()
            )
            raise CatalogueError(f"{where}: {problems}") from None
        for name in record.names():
            if name in owner and owner[name] != record.id:
                raise CatalogueError(f"{where}: name {name!r} is already used by record {owner[name]!r}")
            owner[name] = record.id
        records.append(record)
    return records


def _where(origin: str, index: int, item: Any) -> str:
    ident = item.get("id") if isinstance(item, Mapping) else None
    return f"{origin}: record {index}" + (f" ({ident!r})" if isinstance(ident, str) else "")
