"""auto(): the daemon when it answers, else the same gateway embedded; the same vectors either way."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from ratatoskr_client import (
    AsyncServiceClient,
    BlockingGateway,
    DeadlineExceeded,
    InvalidArgument,
    ModelGateway,
    NotFound,
    ServiceClient,
    SyncModelGateway,
    Unavailable,
    auto,
    auto_async,
)
from ratatoskr_server.embedded import EmbeddedGateway
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
        assert isinstance(without, EmbeddedGateway)
        assert isinstance(without, ModelGateway)
        a, b = await with_daemon.embed(TEXTS), await without.embed(TEXTS)
        np.testing.assert_allclose(np.array(a.vectors), np.array(b.vectors), atol=1e-6)
    finally:
        await with_daemon.close()
        await without.close()


class _LoadingServer:
    """A real gRPC health service on a Unix socket that answers NOT_SERVING until told otherwise."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import grpc
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        self.socket = short_dir() / "loading.sock"
        self.checks = 0
        self._pb2 = health_pb2
        self.servicer = health.HealthServicer()
        self.servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        check = self.servicer.Check

        def counted(request: object, context: object) -> object:
            self.checks += 1
            return check(request, context)

        self.servicer.Check = counted  # type: ignore[method-assign]
        self.server = grpc.server(ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, self.server)
        self.server.add_insecure_port(f"unix:{self.socket}")
        self.server.start()

    def serving(self) -> None:
        self.servicer.set("", self._pb2.HealthCheckResponse.SERVING)

    def stop(self) -> None:
        self.server.stop(0)


def test_auto_waits_for_a_loading_daemon_instead_of_embedding() -> None:
    import threading

    server = _LoadingServer()
    outcome: list[object] = []
    try:
        worker = threading.Thread(target=lambda: outcome.append(auto(server.socket, serving_wait=120)))
        worker.start()
        while server.checks < 3:  # it asked, heard NOT_SERVING, and kept asking
            assert worker.is_alive(), outcome
            time.sleep(0.01)
        server.serving()
        worker.join(timeout=30)
        (gateway,) = outcome
        assert isinstance(gateway, ServiceClient)  # the daemon, not a second in-process copy of the models
        gateway.close()
    finally:
        server.stop()


def test_auto_gives_up_on_a_daemon_that_never_serves() -> None:
    server = _LoadingServer()
    try:
        with pytest.raises(Unavailable, match=r"answered but was not SERVING within 0\.2s"):
            auto(server.socket, serving_wait=0.2)
        assert server.checks >= 2
    finally:
        server.stop()


def test_a_zero_timeout_is_a_deadline_not_none(daemon: DaemonProcess) -> None:
    with daemon.client(timeout=30) as client, pytest.raises(DeadlineExceeded):
        client.embed(["x"], timeout=0)
