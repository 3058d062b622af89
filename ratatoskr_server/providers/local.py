"""The local ONNX pool as a provider: embed, NLI and zero-shot classification, in this process.

Behind the same capability protocols as the HTTP adapters, so the router can plan a local model and
a remote one alike (and later fall back or spill over between them).  Model leasing, task checks and
the deadline live here; the recipes themselves are in ``local/tasks.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from ratatoskr_client.errors import DeadlineExceeded, FailedPrecondition
from ratatoskr_client.types import ClassifyResult, EmbedResult, NliResult, Task
from ratatoskr_server.local import tasks
from ratatoskr_server.local.model import LocalModel
from ratatoskr_server.local.pool import LOCAL_PREFIX, LocalModelPool
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.providers.scrub import Scrubber

LOCAL_PROVIDER = "local"
_NOTHING_TO_SCRUB = Scrubber(())


class LocalProvider:
    kind = "onnx"
    capabilities = frozenset({Capability.EMBED, Capability.NLI, Capability.CLASSIFY})
    supported_parameters: frozenset[str] = frozenset()
    local = True

    def __init__(self, pool: LocalModelPool) -> None:
        self.name = LOCAL_PROVIDER
        self.pool = pool

    @property
    def secrets(self) -> list[str]:
        """Nothing configured here is secret: the pool holds no credentials."""
        return []

    @property
    def scrubber(self) -> Scrubber:
        return _NOTHING_TO_SCRUB

    @asynccontextmanager
    async def _model(
        self, name: str, wanted_tasks: tuple[Task, ...], deadline: float | None
    ) -> AsyncIterator[LocalModel]:
        """Lease ``name``, check it serves one of ``wanted_tasks``, and bound loading and running by ``deadline``."""
        loop = asyncio.get_running_loop()
        when = None if deadline is None else loop.time() + (deadline - time.monotonic())
        try:
            async with asyncio.timeout_at(when), self.pool.lease(name) as model:
                if model.task not in wanted_tasks:
                    wanted = " or ".join(t.value for t in wanted_tasks)
                    raise FailedPrecondition(
                        f"model '{model.name}' serves the {model.task.value} task; this call needs one that "
                        f"serves {wanted}"
                    )
                yield model
        except TimeoutError:
            raise DeadlineExceeded(f"the request's deadline passed before model '{name}' answered") from None

    async def embed(
        self, model: str, inputs: Sequence[str], *, truncate: bool = True, deadline: float | None = None
    ) -> EmbedResult:
        async with self._model(model, (Task.EMBED,), deadline) as m:
            return await tasks.embed(m, inputs, truncate=truncate, deadline=deadline)

    async def nli(
        self,
        model: str,
        pairs: Sequence[tuple[str, str]],
        *,
        truncate: bool = True,
        deadline: float | None = None,
    ) -> NliResult:
        async with self._model(model, (Task.NLI, Task.CLASSIFY), deadline) as m:
            return await tasks.nli(m, pairs, truncate=truncate, deadline=deadline)

    async def classify(
        self,
        model: str,
        text: str,
        labels: Sequence[str],
        *,
        multi_label: bool = False,
        hypothesis_template: str = "",
        deadline: float | None = None,
    ) -> ClassifyResult:
        async with self._model(model, (Task.NLI, Task.CLASSIFY, Task.EMBED), deadline) as m:
            return await tasks.classify(
                m, text, labels, multi_label=multi_label, hypothesis_template=hypothesis_template, deadline=deadline
            )

    async def list_models(self) -> list[str]:
        return sorted(f"{LOCAL_PREFIX}{name}" for name in self.pool.available())

    async def aclose(self) -> None:
        """The pool belongs to the gateway, which closes it after the last caller."""
