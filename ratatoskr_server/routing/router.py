"""Model names to providers: ``provider/model`` prefixes and configured aliases.

``openrouter/anthropic/claude-3.5-sonnet`` goes to the provider entry named
``openrouter`` with model ``anthropic/claude-3.5-sonnet``; an alias maps a
short name to such a string.  ``local/NAME`` is the in-process ONNX pool,
which serves embeddings, NLI and classification but not chat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from ratatoskr_client.errors import FailedPrecondition, InvalidArgument, NotFound, RatatoskrError
from ratatoskr_server.config import Settings
from ratatoskr_server.local.pool import LOCAL_PREFIX
from ratatoskr_server.providers.base import Capability, Provider
from ratatoskr_server.providers.registry import build_provider

log = logging.getLogger(__name__)


class Router:
    def __init__(self, settings: Settings) -> None:
        self.aliases: Mapping[str, str] = dict(settings.aliases)
        self.providers: dict[str, Provider] = {
            name: build_provider(name, entry, settings.http)
            for name, entry in settings.providers.items()
            if entry.enabled
        }

    def target(self, model: str) -> str:
        """What ``model`` names once its alias (if it is one) is resolved: local and remote names alike."""
        return self.aliases.get(model, model)

    def split(self, model: str) -> tuple[str, str] | None:
        """(provider name, upstream model) when ``model`` (or its alias) names a configured provider."""
        target = self.target(model)
        prefix, _, rest = target.partition("/")
        if prefix in self.providers and rest:
            return prefix, rest
        return None

    def resolve(self, model: str, capability: Capability) -> tuple[Provider, str]:
        if not model:
            raise InvalidArgument(
                f"no model given: name one as provider/model (providers: {self._names()}) or an alias"
            )
        found = self.split(model)
        if found is None:
            target = self.target(model)
            if target.startswith(LOCAL_PREFIX):
                raise FailedPrecondition(
                    f"'{model}' is a local ONNX model; they serve embed, nli and classify, not {capability.value}"
                )
            raise NotFound(
                f"model '{model}' names no configured provider; use provider/model with one of: {self._names()}"
                + (f", or an alias: {', '.join(sorted(self.aliases))}" if self.aliases else "")
            )
        name, upstream_model = found
        provider = self.providers[name]
        if capability not in provider.capabilities:
            raise FailedPrecondition(f"provider '{name}' ({provider.kind}) does not offer {capability.value}")
        return provider, upstream_model

    def _names(self) -> str:
        return ", ".join(sorted(self.providers)) or "none configured"

    async def list_models(self, timeout: float = 5.0) -> dict[str, list[str] | RatatoskrError]:
        """Each provider's models, or the error that kept it from answering (one bad upstream hides nothing)."""

        async def one(provider: Provider) -> list[str] | RatatoskrError:
            try:
                async with asyncio.timeout(timeout):
                    return await provider.list_models()
            except RatatoskrError as err:
                return err
            except TimeoutError:
                return RatatoskrError(f"{provider.name}: no model list within {timeout:g}s")

        names = list(self.providers)
        answers = await asyncio.gather(*(one(self.providers[n]) for n in names))
        return dict(zip(names, answers, strict=True))

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()


async def list_provider_models(settings: Settings, timeout: float) -> dict[str, list[str] | RatatoskrError]:
    """Each configured provider's models, with routers built and closed here (for one-shot tools)."""
    router = Router(settings)
    try:
        return await router.list_models(timeout=timeout)
    finally:
        await router.aclose()
