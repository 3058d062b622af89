"""Model metadata: an embedded catalogue shipped as data (``catalogue.json``), merged with live refresh.

The catalogue's facts (context windows, maximum outputs, USD per million
tokens, parameter ranges) come from the providers' own model and pricing
pages: OpenAI's (platform.openai.com/docs/models, /docs/pricing), Anthropic's
(docs.anthropic.com models overview and pricing, with prompt-cache hits at
0.1x input), and the model cards of the open-weights models.  Open-weights
models carry no price there, because it depends on who serves them; live
data (OpenRouter, Ollama) fills it in.
"""

from ratatoskr_server.registry.models import (
    KNOWN_PARAMETERS,
    CatalogueError,
    ModelRecord,
    ParameterSpec,
    Pricing,
    parse_catalogue,
)
from ratatoskr_server.registry.registry import LiveTable, ModelRegistry, RefreshReport, SourceReport

__all__ = [
    "KNOWN_PARAMETERS",
    "CatalogueError",
    "LiveTable",
    "ModelRecord",
    "ModelRegistry",
    "ParameterSpec",
    "Pricing",
    "RefreshReport",
    "SourceReport",
    "parse_catalogue",
]
