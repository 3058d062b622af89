"""Administration of the local pool: load, unload, what is resident."""

from __future__ import annotations

from ratatoskr_client.types import LoadedModel, SwapResult
from ratatoskr_server.local.pool import LocalModelPool


class Admin:
    def __init__(self, pool: LocalModelPool) -> None:
        self.pool = pool

    async def load_model(self, name: str) -> LoadedModel:
        async with self.pool.lease(name):
            pass
        name = self.pool.canonical(name)
        return next(m for m in self.pool.loaded() if m.name == name)

    async def unload_model(self, name: str) -> bool:
        return await self.pool.unload(name)

    async def swap_model(self, name: str) -> SwapResult:
        return await self.pool.swap(name)

    def loaded_models(self) -> list[LoadedModel]:
        return self.pool.loaded()
