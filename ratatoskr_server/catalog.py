"""The catalogue callers browse: ListModels and GetModelMetadata.

Presets, local models from their manifests, each configured provider's live list, and the shipped
registry's facts.  A model the registry knows but no configured provider serves is still described
(its windows, prices and parameters are facts), marked ``routable=False`` so nobody mistakes it for
something this gateway can call.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from ratatoskr_client.errors import InvalidArgument, NotFound, RatatoskrError
from ratatoskr_client.types import ModelInfo, ModelMetadata, Pricing, PrivacyTier, Task
from ratatoskr_server.config import Settings
from ratatoskr_server.local.manifest import ModelManifest
from ratatoskr_server.local.pool import LOCAL_PREFIX, LocalModelPool
from ratatoskr_server.net.egress import requested_tier
from ratatoskr_server.policy.params import ParameterGuard, availability_of
from ratatoskr_server.providers.base import HttpProvider
from ratatoskr_server.registry import ModelRecord, ModelRegistry
from ratatoskr_server.routing.router import Router
from ratatoskr_server.store.inspect import recorded_address
from ratatoskr_server.store.provenance import SignatureStatus

log = logging.getLogger(__name__)


def pricing_of(record: ModelRecord | None) -> Pricing | None:
    if record is None or record.pricing is None:
        return None
    p = record.pricing
    return Pricing(
        float(p.input_per_million),
        float(p.output_per_million),
        float(p.cached_input_per_million) if p.cached_input_per_million is not None else 0.0,
    )


def _tasks(names: list[str]) -> list[Task]:
    known = {t.value for t in Task}
    return [Task(n) for n in names if n in known]


class Catalog:
    def __init__(
        self,
        settings: Callable[[], Settings],
        router: Callable[[], Router],
        pool: LocalModelPool,
        registry: ModelRegistry,
        params: ParameterGuard,
        breakers: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        #: Circuit breaker phases by "provider/model" (shown in each provider model's info).
        self._breakers: Callable[[], Mapping[str, str]] = breakers or (lambda: {})
        self._settings = settings
        self._router = router
        self.pool = pool
        self.registry = registry
        self.params = params

    def _aliases(self) -> dict[str, list[str]]:
        names: dict[str, list[str]] = {}
        for alias, target in self._settings().aliases.items():
            names.setdefault(target, []).append(alias)
        return names

    def _local_metadata(self, name: str, path: Path, aliases: Mapping[str, list[str]]) -> ModelMetadata | None:
        try:
            manifest = ModelManifest.read(path)
        except (OSError, ValueError):
            return None  # a broken folder is reported when someone loads it
        model_id = f"{LOCAL_PREFIX}{name}"
        tasks = [Task(manifest.task)] + ([Task.CLASSIFY] if manifest.task in ("embed", "nli") else [])
        record = self.registry.match_embedded(name)
        info = ModelInfo(model_id, "local", tasks, True, manifest.architecture, aliases.get(model_id, []))
        stored = self.pool.provenance(name)
        signed_by = algorithm = ""
        if stored is not None:  # what the store proved when it last loaded the model
            info = replace(
                info,
                revision=stored.address,
                verification=stored.verification.value,
                signature=stored.signature.status.value,
                encrypted=stored.encrypted,
            )
            signed_by, algorithm = stored.signature.key_id, stored.signature.algorithm
        else:  # not loaded yet: the address content.json records, checked when it loads
            info = replace(info, revision=recorded_address(path), signature=SignatureStatus.UNCHECKED.value)
        return ModelMetadata(
            info=info,
            signed_by=signed_by,
            signature_algorithm=algorithm,
            embedding_dimension=(manifest.dimension or 0) if manifest.task == "embed" else 0,
            max_sequence_length=manifest.max_length,
            context_window=manifest.max_length,
            labels=list(manifest.labels),
            source="local",
            pricing=Pricing(),  # it runs here: nothing to pay
            tokenizer_family=record.tokenizer_family if record else manifest.architecture,
        )

    def _provider_metadata(
        self,
        provider: HttpProvider,
        model: str,
        aliases: Mapping[str, list[str]],
        breakers: Mapping[str, str] | None = None,
    ) -> ModelMetadata:
        record = self.registry.lookup(provider.name, model)
        known = {name: availability_of(spec) for name, spec in record.parameters.items()} if record else {}
        model_id = f"{provider.name}/{model}"
        tasks = [Task(c.value) for c in sorted(provider.capabilities)]
        return ModelMetadata(
            info=ModelInfo(
                model_id,
                provider.name,
                tasks,
                provider.local,
                record.description if record else "",
                aliases.get(model_id, []),
                breaker=(self._breakers() if breakers is None else breakers).get(model_id, ""),
            ),
            context_window=record.context_window if record else 0,
            max_output_tokens=record.max_output_tokens if record else 0,
            source=record.source if record else "",
            parameters=self.params.availability(provider.name, model, provider.supported_parameters, known),
            pricing=Pricing() if provider.local else pricing_of(record),
            tokenizer_family=record.tokenizer_family if record else "",
        )

    def _catalogue_metadata(self, model: str) -> ModelMetadata | None:
        """What the shipped registry says of ``model`` when no configured provider serves it."""
        record = self.registry.match_embedded(model)
        if record is None:
            return None
        prefix, _, rest = model.partition("/")
        provider = prefix if rest else ""
        known = {name: availability_of(spec) for name, spec in record.parameters.items()}
        return ModelMetadata(
            info=ModelInfo(
                model,
                provider,
                _tasks(record.tasks),
                False,
                record.description,
                routable=False,
            ),
            context_window=record.context_window,
            max_output_tokens=record.max_output_tokens,
            source=record.source,
            parameters=known,
            pricing=pricing_of(record),
            tokenizer_family=record.tokenizer_family,
        )

    async def model_metadata(self, model: str) -> ModelMetadata:
        """What the gateway knows of one model: parameters per provider, prices, windows."""
        if not model:
            raise InvalidArgument("no model given")
        settings, router = self._settings(), self._router()
        aliases = self._aliases()
        preset = settings.presets.get(model)
        named = preset.model if preset else model
        target = router.target(named)
        found = router.split(target)
        if found is not None:
            meta = self._provider_metadata(router.providers[found[0]], found[1], aliases)
        else:
            name = self.pool.canonical(target)
            path = self.pool.available().get(name)
            local = self._local_metadata(name, path, aliases) if path else None
            catalogued = local or self._catalogue_metadata(target)
            if catalogued is None:
                raise NotFound(
                    f"unknown model '{model}': not a local model, not provider/model of a configured provider, "
                    "and not in the model catalogue"
                )
            meta = catalogued
        if preset is not None:
            info = replace(meta.info, id=model, description=preset.description or f"preset for {preset.model}")
            meta = replace(meta, info=info)
        return meta

    async def list_models(
        self, *, task: Task | None = None, local_only: bool = False, tier: PrivacyTier | None = None
    ) -> list[ModelMetadata]:
        """Presets, local models from their manifests, then what each provider lists right now.

        Only what ``tier`` (tightening ``privacy.tier``) may use: a provider whose host resolves to
        an address the tier forbids is neither listed nor asked for its list.
        """
        settings, router = self._settings(), self._router()
        effective = router.egress.effective(tier)
        reaches = {} if effective is PrivacyTier.STANDARD else await router.reaches()  # Standard: no lookups
        allowed = set(router.allowed(effective, reaches))
        forbidden = set(router.providers) - allowed
        aliases = self._aliases()
        out: list[ModelMetadata] = []
        for name in sorted(settings.presets):
            with contextlib.suppress(RatatoskrError):
                out.append(await self.model_metadata(name))
        for name, path in sorted(self.pool.available().items()):
            local = self._local_metadata(name, path, aliases)
            if local is not None:
                out.append(local)
        with router.lease(), requested_tier(effective):  # the connects, too, are held to the request's tier
            listed = await router.list_models(names=sorted(allowed))
        breakers = self._breakers()
        for provider_name, answer in listed.items():
            provider = router.providers[provider_name]
            if isinstance(answer, RatatoskrError):
                log.warning(
                    "provider did not list its models", extra={"provider": provider_name, "reason": str(answer)}
                )
                continue
            for model in answer:
                meta = self._provider_metadata(provider, model, aliases, breakers)
                out.append(replace(meta, source="live" if not meta.source else meta.source))
        return [
            m
            for m in out
            if (task is None or task in m.info.tasks)
            and (not local_only or m.info.local)
            and m.info.provider not in forbidden
        ]
