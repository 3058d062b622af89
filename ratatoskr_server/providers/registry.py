"""Which adapter class serves which ``kind`` of provider entry."""

from __future__ import annotations

from ratatoskr_server.config import HttpSettings, ProviderSettings
from ratatoskr_server.net.egress import EgressPolicy
from ratatoskr_server.providers.anthropic import AnthropicProvider
from ratatoskr_server.providers.base import HttpProvider
from ratatoskr_server.providers.huggingface import HuggingFaceProvider
from ratatoskr_server.providers.ollama import OllamaProvider
from ratatoskr_server.providers.openai_compat import OpenAICompatProvider
from ratatoskr_server.telemetry.tracing import Tracing

ADAPTERS: dict[str, type[HttpProvider]] = {
    "openai_compat": OpenAICompatProvider,
    "anthropic": AnthropicProvider,
    "ollama": OllamaProvider,
    "huggingface": HuggingFaceProvider,
}


def build_provider(
    name: str,
    settings: ProviderSettings,
    http: HttpSettings,
    egress: EgressPolicy | None = None,
    tracing: Tracing | None = None,
) -> HttpProvider:
    return ADAPTERS[settings.kind](name, settings, http, egress, tracing)
