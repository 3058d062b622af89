"""The local side of a gateway, built on its own: the inference and loader executors and the pool.

A daemon builds these first and starts loading its preload models on the loader threads before it
imports and builds everything else (fronts, providers, stages, gRPC): ONNX Runtime creates a
session with the GIL released, so the model loads beside those imports instead of after them.
``Gateway.from_settings`` builds them itself when it is not handed any.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ratatoskr_server.config import Settings
from ratatoskr_server.local.pool import LocalModelPool
from ratatoskr_server.store.store import ModelStore
from ratatoskr_server.telemetry.pool import PoolTelemetry


@dataclass(frozen=True, slots=True)
class LocalParts:
    pool: LocalModelPool
    #: Batches and big tokenizations.
    executor: ThreadPoolExecutor
    #: Imports, store checks, sessions and tokenizer files: apart, so a load never takes an inference thread.
    loader: ThreadPoolExecutor

    @classmethod
    def from_settings(cls, settings: Settings, telemetry: PoolTelemetry | None = None) -> LocalParts:
        local = settings.local
        executor = ThreadPoolExecutor(max_workers=local.inference_workers, thread_name_prefix="ratatoskr-infer")
        loader = ThreadPoolExecutor(max_workers=local.load_workers, thread_name_prefix="ratatoskr-load")
        pool = LocalModelPool(settings, executor, loader, store=ModelStore(settings))
        pool.telemetry = telemetry  # the gateway sets its own later; an early load reports through this one
        return cls(pool, executor, loader)
