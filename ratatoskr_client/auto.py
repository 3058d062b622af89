"""``auto()``: the daemon when one answers, else the same gateway in this process.

A service should not care whether a daemon runs on its host: it calls
``auto()`` and gets the same interface either way.  The server package is
imported lazily, only when no daemon answers.
"""

from __future__ import annotations

import os

from ratatoskr_client.blocking import BlockingGateway
from ratatoskr_client.client import AsyncServiceClient, ServiceClient
from ratatoskr_client.errors import RatatoskrError
from ratatoskr_client.protocol import ModelGateway, SyncModelGateway

#: How long to wait for a daemon's health answer before going embedded.
DEFAULT_HEALTH_TIMEOUT_S = 0.5


async def auto_async(
    address: str | os.PathLike[str] | None = None,
    *,
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT_S,
    config_path: str | os.PathLike[str] | None = None,
) -> ModelGateway:
    """An asyncio gateway: a client of the daemon at ``address`` if it is SERVING, else embedded."""
    client = AsyncServiceClient(address)
    try:
        if await client.health(timeout=health_timeout) == "SERVING":
            return client
    except RatatoskrError:
        pass
    await client.close()
    from ratatoskr_server.embedded import open_embedded_gateway

    return await open_embedded_gateway(config_path)


def auto(
    address: str | os.PathLike[str] | None = None,
    *,
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT_S,
    config_path: str | os.PathLike[str] | None = None,
) -> SyncModelGateway:
    """A blocking gateway: a client of the daemon at ``address`` if it is SERVING, else embedded."""
    client = ServiceClient(address)
    try:
        if client.health(timeout=health_timeout) == "SERVING":
            return client
    except RatatoskrError:
        pass
    client.close()
    from ratatoskr_server.embedded import open_embedded_gateway

    return BlockingGateway(lambda: open_embedded_gateway(config_path))
