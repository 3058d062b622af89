"""The gateway inside the caller's process, for ``auto()`` when no daemon answers."""

from __future__ import annotations

import os

from ratatoskr_server.config import load_settings
from ratatoskr_server.gateway import Gateway


async def open_embedded_gateway(config_path: str | os.PathLike[str] | None = None) -> Gateway:
    """Same configuration sources as the daemon; models load on first use rather than at start."""
    return Gateway(load_settings(config_path))
