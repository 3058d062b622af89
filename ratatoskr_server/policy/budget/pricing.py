"""What a call costs: its model's price (a declared one, else the registry's) times its tokens.

Everything is :class:`~decimal.Decimal`; prices are USD per million tokens.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from ratatoskr_server.config import PriceSettings
from ratatoskr_server.registry import ModelRegistry

MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Price:
    input_per_million: Decimal
    output_per_million: Decimal
    cached_input_per_million: Decimal | None = None

    @property
    def free(self) -> bool:
        return self.input_per_million == 0 and self.output_per_million == 0

    def cost(self, prompt_tokens: int, output_tokens: int, cached_tokens: int = 0) -> Decimal:
        """USD for a call; cached prompt tokens at the cached price where the model has one."""
        cached = min(cached_tokens, prompt_tokens) if self.cached_input_per_million is not None else 0
        total = (
            (prompt_tokens - cached) * self.input_per_million
            + cached * (self.cached_input_per_million or Decimal(0))
            + output_tokens * self.output_per_million
        )
        return total / MILLION


def find_price(
    names: Sequence[str], provider: str, model: str, declared: Mapping[str, PriceSettings], registry: ModelRegistry
) -> Price | None:
    """The price of the model known by ``names``: the first declared glob any name matches, else the
    registry's record for (``provider``, ``model``); None when neither knows one."""
    for pattern, price in declared.items():
        if any(fnmatch.fnmatchcase(name, pattern) for name in names):
            return Price(price.input_per_million, price.output_per_million)
    record = registry.lookup(provider, model)
    if record is None or record.pricing is None:
        return None
    p = record.pricing
    return Price(p.input_per_million, p.output_per_million, p.cached_input_per_million)
