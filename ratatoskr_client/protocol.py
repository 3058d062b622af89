"""The interface every way of reaching the gateway implements.

``auto()`` hands back either a gRPC client or an in-process gateway; callers
type against these protocols and never learn which one they got.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ratatoskr_client.types import EmbedResult


@runtime_checkable
class ModelGateway(Protocol):
    """The asyncio face of the gateway."""

    async def embed(
        self,
        inputs: Sequence[str],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> EmbedResult: ...

    async def close(self) -> None: ...


@runtime_checkable
class SyncModelGateway(Protocol):
    """The blocking face of the gateway, for code without an event loop."""

    def embed(
        self,
        inputs: Sequence[str],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> EmbedResult: ...

    def close(self) -> None: ...
