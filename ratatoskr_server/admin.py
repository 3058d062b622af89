"""Administration of the local pool: load, unload, what is resident."""

from __future__ import annotations

import logging

from ratatoskr_client.errors import RatatoskrError
from ratatoskr_client.types import LoadedModel, SwapResult
from ratatoskr_server.local.pool import LocalModelPool

log = logging.getLogger(__name__)


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

    async def swap_changed(self) -> list[str]:
        """Move every serving model whose files changed on disk to its new revision, as SwapModel
        would: a reload is how an operator says "take what is on disk now".  Each model is one
        phrase for the reload's answer; a model whose new files are refused keeps serving its old
        revision and says why, without failing the reload."""
        said: list[str] = []
        for name in sorted({m.name for m in self.pool.loaded() if m.state == "ready"}):
            try:
                result = await self.pool.swap(name)
            except RatatoskrError as err:
                log.warning("reload: model files refused; the old revision keeps serving", extra={"model": name})
                said.append(f"model '{name}' keeps its old revision: {err}")
                continue
            if result.mode != "unchanged":
                said.append(f"model '{name}': {result.old_revision} -> {result.new_revision} ({result.mode})")
        return said

    def loaded_models(self) -> list[LoadedModel]:
        return self.pool.loaded()
