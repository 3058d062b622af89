"""The live table on disk, so `ratatoskr registry update` informs a daemon that did not fetch itself.

The daemon loads the file at start and on every reload (SIGHUP, Admin.Reload);
the file is replaced atomically, so a reader sees the old table or the new
one.  A damaged file is reported and ignored: the embedded catalogue answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ratatoskr_server.config import Settings
from ratatoskr_server.net.egress import EgressPolicy
from ratatoskr_server.registry.models import ModelRecord
from ratatoskr_server.registry.registry import ModelRegistry, RefreshReport

log = logging.getLogger(__name__)


def save_live(registry: ModelRegistry, path: Path) -> None:
    live = registry.live
    data: dict[str, Any] = {
        "openrouter": [r.model_dump(mode="json") for r in live.openrouter],
        "local": {provider: [r.model_dump(mode="json") for r in records] for provider, records in live.local.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".registry-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def load_live(registry: ModelRegistry, path: Path) -> bool:
    """Swap the file's live table into ``registry``; False (and the embedded data kept) when there is none."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        openrouter = [ModelRecord.model_validate(r) for r in data.get("openrouter", [])]
        local = {p: [ModelRecord.model_validate(r) for r in rs] for p, rs in data.get("local", {}).items()}
    except FileNotFoundError:
        return False
    except (OSError, ValueError, ValidationError, AttributeError) as err:
        log.warning("ignoring the registry cache", extra={"path": str(path), "reason": str(err)[:300]})
        return False
    registry.set_live(openrouter=openrouter, local=local)
    return True


async def update(registry: ModelRegistry, settings: Settings, egress: EgressPolicy | None = None) -> RefreshReport:
    """Refresh from OpenRouter and every enabled Ollama provider, then save the live table.

    Every source is reached through the egress guard at the global privacy tier (``egress``, by
    default the settings' own rules).
    """
    reg = settings.registry
    ollama = {
        name: entry.base_url
        for name, entry in settings.providers.items()
        if entry.enabled and entry.kind == "ollama" and reg.refresh_ollama
    }
    report = await registry.refresh(
        openrouter_url=reg.openrouter_url or None,
        ollama=ollama,
        http=settings.http,
        egress=egress or EgressPolicy.from_settings(settings),
    )
    await asyncio.to_thread(save_live, registry, reg.cache_file.expanduser())  # file IO: off the loop
    return report
