"""The façade every way in calls: the daemon's servicers and the embedded ``auto()`` alike.

It validates requests against the configured limits, picks the model, and
runs blocking work in one bounded executor so the event loop never stalls.
It speaks domain types only; protobuf stays at the RPC edge.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ratatoskr_client.errors import DeadlineExceeded, InvalidArgument
from ratatoskr_client.types import EmbedResult, LoadedModel, Timing, Usage
from ratatoskr_server.config import Settings
from ratatoskr_server.local.encoder import EncodeOutput
from ratatoskr_server.local.pool import LocalModelPool

log = logging.getLogger(__name__)


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._executor = ThreadPoolExecutor(
            max_workers=settings.local.inference_workers, thread_name_prefix="ratatoskr-infer"
        )
        self.pool = LocalModelPool(settings, self._executor)

    async def start(self) -> None:
        """Load the models named in ``local.preload``; the daemon reports SERVING after this."""
        for name in self.settings.local.preload:
            await self.pool.get(name)

    def apply_settings(self, settings: Settings) -> None:
        """Take reloadable settings (limits, model declarations); the executor size needs a restart."""
        self.settings = settings
        self.pool.update_settings(settings)

    async def embed(
        self,
        inputs: Sequence[str],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> EmbedResult:
        arrived = time.perf_counter()
        self._check_inputs(inputs)
        name = self.pool.canonical(model or self.settings.local.default_embed_model)
        deadline = time.monotonic() + timeout if timeout is not None else None
        max_batch = self.settings.local.max_batch_size
        async with self.pool.use(name) as encoder:
            loop = asyncio.get_running_loop()
            queued = time.perf_counter()

            def work() -> tuple[float, EncodeOutput]:
                started = time.perf_counter()
                return started, encoder.embed(inputs, truncate=truncate, max_batch=max_batch, deadline=deadline)

            future = loop.run_in_executor(self._executor, work)
            try:
                async with asyncio.timeout(timeout):
                    started, raw = await future
            except TimeoutError:
                raise DeadlineExceeded(f"the request's deadline passed before model '{name}' finished") from None
        tokens = sum(raw.tokens)
        done = time.perf_counter()
        return EmbedResult(
            vectors=raw.vectors.tolist(),
            tokens=raw.tokens,
            truncated=raw.truncated,
            dimension=encoder.dimension,
            model=name,
            normalized=encoder.normalized,
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
            timing=Timing(
                queue_ms=(started - queued) * 1000 + (queued - arrived) * 1000,
                tokenization_ms=raw.tokenization_ms,
                inference_ms=raw.inference_ms,
                total_ms=(done - arrived) * 1000,
                input_tokens=tokens,
            ),
        )

    def _check_inputs(self, inputs: Sequence[str]) -> None:
        limits = self.settings.limits
        if not inputs:
            raise InvalidArgument("inputs is empty: send at least one text to embed")
        if len(inputs) > limits.max_inputs_per_request:
            raise InvalidArgument(
                f"{len(inputs)} inputs exceed the limit of {limits.max_inputs_per_request} per request "
                "(limits.max_inputs_per_request); split them over several calls"
            )
        for i, text in enumerate(inputs):
            if len(text) > limits.max_input_chars:
                raise InvalidArgument(
                    f"input {i} is {len(text)} characters; the limit is {limits.max_input_chars} "
                    "(limits.max_input_chars)"
                )

    async def load_model(self, name: str) -> LoadedModel:
        resident = await self.pool.get(name)
        return resident.describe()

    async def unload_model(self, name: str) -> bool:
        return await self.pool.unload(name)

    def loaded_models(self) -> list[LoadedModel]:
        return self.pool.loaded()

    async def close(self) -> None:
        self.pool.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
