"""server.reuse_port: several daemons of one user on the same TCP ports, the kernel spreading
connections among them (how a host with many cores runs one daemon per core behind one address)."""

from __future__ import annotations

from pathlib import Path

import httpx

from ratatoskr_client import ServiceClient
from tests.conftest import DaemonProcess, free_port

#: Each try is a new TCP connection, which the kernel hashes to one of two listeners: 40 tries all
#: landing on one daemon has odds of 2**-39.
TRIES = 40


def _pid_behind(address: str) -> int:
    with ServiceClient(address, timeout=10) as client:  # a new channel: a new connection
        return client.status().pid


def test_daemons_with_reuse_port_share_the_grpc_and_http_ports(model_root: Path) -> None:
    grpc_port, http_port = free_port(), free_port()
    shared = {
        "server": {"tcp_port": grpc_port, "reuse_port": True},
        "http_front": {"enabled": True, "port": http_port},
        "local": {"preload": []},
    }
    first = DaemonProcess(model_root, **shared).start()
    second = DaemonProcess(model_root, **shared).start()
    try:
        assert first.proc is not None and second.proc is not None
        pids = set()
        for _ in range(TRIES):
            pids.add(_pid_behind(f"127.0.0.1:{grpc_port}"))
            if len(pids) == 2:
                break
        assert pids == {first.proc.pid, second.proc.pid}

        # A daemon that does not share cannot take the port: the same one line as any busy port.
        alone = DaemonProcess(model_root, server={"tcp_port": grpc_port}, local={"preload": []})
        alone.start(wait=False)
        assert alone.proc is not None
        assert alone.proc.wait(timeout=60) == 1
        assert f"cannot listen on 127.0.0.1:{grpc_port}: the port is in use by another process" in alone.log()

        # One daemon stops: the other keeps both ports.
        assert first.stop() == 0
        for _ in range(4):
            assert _pid_behind(f"127.0.0.1:{grpc_port}") == second.proc.pid
            with httpx.Client(timeout=10) as http:  # a new connection each time
                assert http.get(f"http://127.0.0.1:{http_port}/v1/models").status_code == 200
    finally:
        first.stop()
        second.stop()
