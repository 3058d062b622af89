"""``ratatoskr tree``: the configured backends at a glance, from the configuration alone.

Nothing here touches the network: a provider's privacy tier is the one its base URL's host earns
without resolving it (an address literal is judged as the egress guard judges it; a hostname by
what its provider declares, and the guard still checks the resolved address at connect time).
Breaker states come from a running daemon's Status only when the caller passes them in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text
from rich.tree import Tree

from ratatoskr_client.types import PrivacyTier
from ratatoskr_server.config import Settings
from ratatoskr_server.local.discovery import local_models
from ratatoskr_server.local.manifest import MANIFEST_FILE, ModelManifest
from ratatoskr_server.net.egress import EgressPolicy, host_of

#: Breaker phases, worst first, and how each is drawn.
BREAKER_STYLE = {"open": "bold red", "half_open": "yellow", "closed": "green"}


@dataclass(frozen=True, slots=True)
class Backend:
    """One configured backend as the tree shows it."""

    name: str
    local: bool
    family: str
    tier: str
    #: How the tier was decided: "address" (a literal or loopback), "declared", or "at connect".
    tier_basis: str
    detail: str = ""
    models: list[str] = field(default_factory=list)
    enabled: bool = True


def provider_tier(policy: EgressPolicy, host: str) -> tuple[PrivacyTier, str]:
    """The tier a provider's host earns without DNS, and on what basis."""
    literal = _address(host)
    if literal is not None:
        return policy.tier_of(host, literal), "address"
    if host == "localhost":
        return PrivacyTier.SOVEREIGN, "address"
    declared = policy.declarations.get(host)
    if declared is not None and declared.dedicated:
        return PrivacyTier.PRIVATE, "declared"
    # A host declared private is sovereign only where it resolves inside privacy.private_networks.
    return PrivacyTier.STANDARD, "at connect"


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def backends(settings: Settings) -> list[Backend]:
    """Local ONNX models (from their manifests) and configured providers, local ones first."""
    out: list[Backend] = []
    for name, folder in sorted(local_models(settings).items()):
        try:
            manifest = ModelManifest.read(folder)
        except (OSError, ValueError):
            out.append(Backend(name, True, "?", PrivacyTier.SOVEREIGN.value, "address", f"no readable {MANIFEST_FILE}"))
            continue
        shape = f"dim {manifest.dimension}" if manifest.dimension else f"{len(manifest.labels)} labels"
        quantized = f", {manifest.quantization}" if manifest.quantization else ""
        out.append(
            Backend(
                name=f"local/{name}",
                local=True,
                family=f"{manifest.architecture} {manifest.task}",
                tier=PrivacyTier.SOVEREIGN.value,  # in process: the data never leaves it
                tier_basis="address",
                detail=f"onnx, {shape}, max {manifest.max_length} tokens{quantized}",
            )
        )
    policy = EgressPolicy.from_settings(settings)
    for name, entry in sorted(settings.providers.items()):
        tier, basis = provider_tier(policy, host_of(entry.base_url))
        out.append(
            Backend(
                name=name,
                local=entry.local,
                family=entry.kind,
                tier=tier.value,
                tier_basis=basis,
                detail=host_of(entry.base_url),
                models=list(entry.models),
                enabled=entry.enabled,
            )
        )
    return out


def sources(settings: Settings, config: Path | None) -> list[Path]:
    """Every file and folder the tree is drawn from, for its cache (terminal/tree_cache.py): the
    configuration and secrets files, the model folder and each entry in it (a folder that gains a
    manifest is a new model), and each local model's folder and manifest."""
    found = [p for p in (config, settings.secrets_file) if p is not None]
    root = settings.local.resolved_model_dir()
    found.append(root)
    if root.is_dir():
        found.extend(sorted(root.iterdir()))
    for folder in local_models(settings).values():
        found.extend((folder, folder / MANIFEST_FILE))
    return [p.expanduser() for p in found]


def _breaker(name: str, breakers: Mapping[str, str]) -> str:
    """The worst phase among the breakers of ``name`` ("provider/…" keys), "" when none saw a call."""
    phases = [phase for key, phase in breakers.items() if key == name or key.startswith(f"{name}/")]
    for phase in BREAKER_STYLE:
        if phase in phases:
            return phase
    return ""


def build_tree(items: list[Backend], breakers: Mapping[str, str] | None = None) -> Tree:
    """The tree: local and remote branches, a line per backend, its models under it."""
    root = Tree(Text("ratatoskr backends", style="bold"))
    branches = {
        True: root.add(Text("local", style="bold cyan")),
        False: root.add(Text("remote", style="bold magenta")),
    }
    for item in items:
        line = Text(item.name, style="bold" if item.enabled else "dim strike")
        line.append(f"  {item.family}", style="blue")
        basis = "" if item.tier_basis == "address" else f" ({item.tier_basis})"
        line.append(f"  {item.tier}{basis}", style="green" if item.tier == "sovereign" else "yellow")
        if item.detail:
            line.append(f"  {item.detail}", style="dim")
        if not item.enabled:
            line.append("  disabled", style="red")
        if breakers is not None and not item.name.startswith("local/"):
            phase = _breaker(item.name, breakers)
            line.append(f"  breaker {phase or 'unused'}", style=BREAKER_STYLE.get(phase, "dim"))
        node = branches[item.local].add(line)
        for model in item.models:
            model_line = Text(model)
            if breakers is not None and (phase := breakers.get(f"{item.name}/{model}", "")):
                model_line.append(f"  breaker {phase}", style=BREAKER_STYLE.get(phase, "dim"))
            node.add(model_line)
    for branch in branches.values():
        if not branch.children:
            branch.add(Text("none configured", style="dim"))
    return root
