"""Model names to a plan of candidates: ``provider/model`` prefixes, aliases, the local pool.

``openrouter/anthropic/claude-3.5-sonnet`` goes to the provider entry named ``openrouter`` with
model ``anthropic/claude-3.5-sonnet``; an alias maps a short name to such a string or to a local
model.  Any other name (``local/NAME`` or a bare name) is the in-process ONNX pool, itself a
provider, which serves embeddings, NLI and classification but not chat.  Aliases resolve the same
way for every task.

A router owns the HTTP providers built from one configuration.  A reload builds a new one and
retires the old: calls that hold a lease finish on it, and the last one out closes its
connections.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from ratatoskr_client.errors import FailedPrecondition, InvalidArgument, NotFound, RatatoskrError
from ratatoskr_client.types import PrivacyTier
from ratatoskr_server.config import Settings
from ratatoskr_server.local.pool import LOCAL_PREFIX
from ratatoskr_server.net.egress import EgressPolicy, Reach
from ratatoskr_server.pipeline.call import Candidate
from ratatoskr_server.providers.base import HttpProvider
from ratatoskr_server.providers.capabilities import Capability, Provider
from ratatoskr_server.providers.registry import build_provider
from ratatoskr_server.telemetry.tracing import Tracing

log = logging.getLogger(__name__)


class Router:
    def __init__(
        self,
        settings: Settings,
        local: Provider | None = None,
        egress: EgressPolicy | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.aliases: Mapping[str, str] = dict(settings.aliases)
        #: Fallback chains by name: candidate names (provider/model, alias, local model) in order.
        self.routes: Mapping[str, tuple[str, ...]] = {
            name: tuple(route.candidates) for name, route in settings.routes.items()
        }
        self.local = local
        #: The egress rules of this configuration: every provider's connections are checked against them.
        self.egress = egress or EgressPolicy.from_settings(settings)
        self.providers: dict[str, HttpProvider] = {
            name: build_provider(name, entry, settings.http, self.egress, tracing)
            for name, entry in settings.providers.items()
            if entry.enabled
        }
        self._leases = 0
        self._retired = False
        self._closed: asyncio.Task[None] | None = None

    @contextmanager
    def lease(self) -> Iterator[Router]:
        """Hold this router's connections open for one call, even if a reload retires it meanwhile.

        A plain counter (no await): it is taken on every call, so it costs as little as possible.
        """
        self._leases += 1
        try:
            yield self
        finally:
            self._leases -= 1
            if self._retired and self._leases == 0:
                self._close_soon()

    def retire(self) -> None:
        """No new calls come here; close the connections once the last leased call ends."""
        self._retired = True
        if self._leases == 0:
            self._close_soon()

    def _close_soon(self) -> None:
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_task(self.aclose())

    @property
    def closed(self) -> bool:
        return self._closed is not None and self._closed.done()

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

    def plan(self, model: str, capability: Capability) -> tuple[Candidate, ...]:
        """Where a call for ``model`` may go, in order of preference: a route's candidates (those
        that offer ``capability``), else the one place the name or its alias points to."""
        if not model:
            raise InvalidArgument(
                f"no model given: name one as provider/model (providers: {self._names()}) or an alias"
            )
        route = self.routes.get(model)
        if route is None:
            return (self._candidate(model, capability),)
        found: list[Candidate] = []
        refused: RatatoskrError | None = None
        for name in route:
            try:
                found.append(self._candidate(name, capability))
            except RatatoskrError as err:  # this member cannot serve the task; the others may
                refused = refused or err
        if not found:
            assert refused is not None
            raise type(refused)(f"route '{model}' has no candidate for {capability.value}: {refused}")
        return tuple(found)

    def _candidate(self, model: str, capability: Capability) -> Candidate:
        found = self.split(model)
        if found is not None:
            name, upstream_model = found
            provider = self.providers[name]
            if capability not in provider.capabilities:
                raise FailedPrecondition(f"provider '{name}' ({provider.kind}) does not offer {capability.value}")
            return Candidate(provider, upstream_model)
        target = self.target(model)
        if self.local is not None and capability in self.local.capabilities:
            return Candidate(self.local, target)
        if target.startswith(LOCAL_PREFIX):
            raise FailedPrecondition(
                f"'{model}' is a local ONNX model; they serve embed, nli and classify, not {capability.value}"
            )
        raise NotFound(
            f"model '{model}' names no configured provider; use provider/model with one of: {self._names()}"
            + (f", or an alias: {', '.join(sorted(self.aliases))}" if self.aliases else "")
        )

    def _names(self) -> str:
        return ", ".join(sorted(self.providers)) or "none configured"

    async def list_models(
        self, timeout: float = 5.0, names: Iterable[str] | None = None
    ) -> dict[str, list[str] | RatatoskrError]:
        """Each provider's models (of ``names``, default all), or the error that kept it from
        answering (one bad upstream hides nothing)."""

        async def one(provider: HttpProvider) -> list[str] | RatatoskrError:
            try:
                async with asyncio.timeout(timeout):
                    return provider.scrubber.model_ids(await provider.list_models())
            except RatatoskrError as err:
                return err
            except TimeoutError:
                return RatatoskrError(f"{provider.name}: no model list within {timeout:g}s")

        names = list(self.providers) if names is None else [n for n in names if n in self.providers]
        answers = await asyncio.gather(*(one(self.providers[n]) for n in names))
        return dict(zip(names, answers, strict=True))

    async def reaches(self) -> dict[str, Reach | OSError]:
        """Each provider's resolved addresses and the tier they satisfy (or why its host did not resolve)."""

        async def one(provider: HttpProvider) -> Reach | OSError:
            try:
                return await provider.reach()
            except OSError as err:
                return err

        names = list(self.providers)
        found = await asyncio.gather(*(one(self.providers[n]) for n in names))
        return dict(zip(names, found, strict=True))

    def allowed(self, tier: PrivacyTier, reaches: Mapping[str, Reach | OSError]) -> list[str]:
        """The providers ``tier`` may use, given ``reaches`` (an unresolvable host is not one)."""
        if tier is PrivacyTier.STANDARD:
            return list(self.providers)
        return [n for n, r in reaches.items() if isinstance(r, Reach) and r.tier.rank <= tier.rank]

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
