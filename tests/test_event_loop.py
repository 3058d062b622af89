"""Blocking work stays off the event loop: big upstream answers, registry files.

Each check records which thread did the work, so it does not depend on how fast this machine is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ratatoskr_server import gateway as gateway_module
from ratatoskr_server.config import load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.registry import cache
from tests.upstreams import openai_double
from tests.upstreams.harness import serve


def _on_loop_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


async def test_remote_embedding_answers_are_checked_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The norm check over an upstream's vectors (millions of floats for a big batch) runs in a worker."""
    seen: list[bool] = []
    real_norm = np.linalg.norm

    def norm(*args: Any, **kwargs: Any) -> Any:
        seen.append(_on_loop_thread())
        return real_norm(*args, **kwargs)

    with serve(openai_double.routes()) as upstream:
        providers = {"openai": {"kind": "openai_compat", "base_url": f"{upstream.base_url}/v1"}}
        gw = EmbeddedGateway(
            load_settings(
                local={"model_dir": tmp_path, "preload": [], "auto_import_default": False}, providers=providers
            )
        )
        try:
            monkeypatch.setattr(np.linalg, "norm", norm)
            result = await gw.embed(["a", "bbb"], model="openai/emb")
        finally:
            await gw.close()
    assert len(result.vectors) == 2
    assert seen == [False]  # computed once, not on the loop's thread


async def test_registry_files_are_read_and_written_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload reads the registry cache and a refresh writes it, both in a worker thread."""
    threads: dict[str, bool] = {}

    def watch(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            threads[name] = _on_loop_thread()
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(gateway_module, "load_live", watch("load", cache.load_live))
    monkeypatch.setattr(cache, "save_live", watch("save", cache.save_live))
    settings = load_settings(
        local={"model_dir": tmp_path, "preload": [], "auto_import_default": False},
        registry={"cache_file": str(tmp_path / "registry.json"), "openrouter_url": "", "refresh_ollama": False},
    )
    gw = EmbeddedGateway(settings)
    try:
        threads.clear()  # construction happens before serving; reload and refresh are what count
        await gw.apply_settings(settings)
        await gw.gateway.refresh_registry()
    finally:
        await gw.close()
    assert threads == {"load": False, "save": False}  # both ran, neither on the loop's thread
