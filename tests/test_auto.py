"""auto(): the daemon when it answers, else the same gateway embedded; the same vectors either way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ratatoskr_client import (
    AsyncServiceClient,
    BlockingGateway,
    InvalidArgument,
    ModelGateway,
    NotFound,
    ServiceClient,
    SyncModelGateway,
    auto,
    auto_async,
)
from ratatoskr_server.gateway import Gateway
from tests.conftest import DaemonProcess, short_dir, toml_text

TEXTS = ["auto mode picks a transport", "the vectors must not depend on it", "ünïcødé too"]


@pytest.fixture(scope="module")
def embedded_config(model_root: Path) -> Path:
    path = short_dir() / "embedded.toml"
    path.write_text(toml_text({"local": {"model_dir": model_root, "auto_import_default": False}}), encoding="utf-8")
    return path


def test_sync_auto_in_both_modes_gives_the_same_vectors(daemon: DaemonProcess, embedded_config: Path) -> None:
    with_daemon = auto(daemon.socket)
    without = auto(short_dir() / "nobody-here.sock", config_path=embedded_config)
    try:
        assert isinstance(with_daemon, ServiceClient)
        assert isinstance(without, BlockingGateway)
        assert isinstance(with_daemon, SyncModelGateway) and isinstance(without, SyncModelGateway)
        a, b = with_daemon.embed(TEXTS), without.embed(TEXTS)
        np.testing.assert_allclose(np.array(a.vectors), np.array(b.vectors), atol=1e-6)
        assert a.tokens == b.tokens and a.model == b.model
        # The same typed errors come out of both.
        for gateway in (with_daemon, without):
            with pytest.raises(InvalidArgument):
                gateway.embed([])
            with pytest.raises(NotFound):
                gateway.embed(["x"], model="missing")
    finally:
        with_daemon.close()
        without.close()


async def test_async_auto_in_both_modes(daemon: DaemonProcess, embedded_config: Path) -> None:
    with_daemon = await auto_async(daemon.socket)
    without = await auto_async(short_dir() / "nobody-here.sock", config_path=embedded_config)
    try:
        assert isinstance(with_daemon, AsyncServiceClient)
        assert isinstance(without, Gateway)
        assert isinstance(without, ModelGateway)
        a, b = await with_daemon.embed(TEXTS), await without.embed(TEXTS)
        np.testing.assert_allclose(np.array(a.vectors), np.array(b.vectors), atol=1e-6)
    finally:
        await with_daemon.close()
        await without.close()
