"""``auto()``: the daemon when one answers, else the same gateway in this process.

A service should not care whether a daemon runs on its host: it calls
``auto()`` and gets the same interface either way.  The server package is
imported lazily, only when no daemon answers.
"""

from __future__ import annotations

import asyncio
import os
import time

from ratatoskr_client.blocking import BlockingGateway
from ratatoskr_client.client import AsyncServiceClient, ServiceClient
from ratatoskr_client.errors import RatatoskrError, Unavailable
from ratatoskr_client.protocol import ModelGateway, SyncModelGateway
from ratatoskr_client.types import PrivacyTier

#: How long to wait for a daemon's health answer before going embedded.
DEFAULT_HEALTH_TIMEOUT_S = 0.5
#: How long a daemon that answers but is still loading (NOT_SERVING) may take to turn SERVING.
DEFAULT_SERVING_WAIT_S = 60.0
_POLL_S = 0.1


def _not_serving(target: str, waited: float) -> Unavailable:
    return Unavailable(
        f"the daemon at {target} answered but was not SERVING within {waited:g}s (still loading its models, "
        "or draining); not starting a second copy of the models in this process"
    )


async def auto_async(
    address: str | os.PathLike[str] | None = None,
    *,
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT_S,
    serving_wait: float = DEFAULT_SERVING_WAIT_S,
    config_path: str | os.PathLike[str] | None = None,
    privacy_tier: PrivacyTier | None = None,
) -> ModelGateway:
    """An asyncio gateway: the daemon at ``address`` once it is SERVING, else embedded when none answers.

    A daemon that answers NOT_SERVING is loading its models: it is waited for (``serving_wait``), not
    replaced by a second in-process copy of the same models.  ``privacy_tier`` is asked for on
    every call, daemon or embedded: it can only tighten the configured tier.
    """
    client = AsyncServiceClient(address, privacy_tier=privacy_tier)
    started = time.monotonic()
    while True:
        try:
            state = await client.health(timeout=health_timeout)
        except RatatoskrError:
            break  # nobody answers: run the gateway in this process
        if state == "SERVING":
            return client
        if time.monotonic() - started >= serving_wait:
            await client.close()
            raise _not_serving(client.target, serving_wait)
        await asyncio.sleep(_POLL_S)
    await client.close()
    from ratatoskr_server.embedded import open_embedded_gateway

    return await open_embedded_gateway(config_path, privacy_tier=privacy_tier)


def auto(
    address: str | os.PathLike[str] | None = None,
    *,
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT_S,
    serving_wait: float = DEFAULT_SERVING_WAIT_S,
    config_path: str | os.PathLike[str] | None = None,
    privacy_tier: PrivacyTier | None = None,
) -> SyncModelGateway:
    """A blocking gateway: the daemon at ``address`` once it is SERVING, else embedded when none answers."""
    client = ServiceClient(address, privacy_tier=privacy_tier)
    started = time.monotonic()
    while True:
        try:
            state = client.health(timeout=health_timeout)
        except RatatoskrError:
            break  # nobody answers: run the gateway in this process
        if state == "SERVING":
            return client
        if time.monotonic() - started >= serving_wait:
            client.close()
            raise _not_serving(client.target, serving_wait)
        time.sleep(_POLL_S)
    client.close()
    from ratatoskr_server.embedded import open_embedded_gateway

    return BlockingGateway(lambda: open_embedded_gateway(config_path, privacy_tier=privacy_tier))
