"""systemd's notification protocol, with the test as systemd: a real AF_UNIX datagram socket at
$NOTIFY_SOCKET receiving what a real daemon sends through start, reload, watchdog and stop."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ratatoskr_client import ServiceClient
from ratatoskr_server.sdnotify import Notifier, monotonic_usec
from tests.conftest import DaemonProcess, short_dir


class Listener:
    """What systemd's end of $NOTIFY_SOCKET receives, one dict per datagram."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.messages: list[dict[str, str]] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            with self._changed:
                self.messages.append(fields)
                self._changed.notify_all()

    def wait_for(self, found: Callable[[list[dict[str, str]]], bool], timeout: float = 60.0) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: found(self.messages), timeout):
                raise AssertionError(f"not received in {timeout}s; got {self.messages}")

    def count(self, key: str) -> int:
        with self._changed:
            return sum(1 for m in self.messages if key in m)


@contextmanager
def listening(address: str) -> Iterator[Listener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    try:
        yield Listener(sock)
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def _index(messages: list[dict[str, str]], key: str, start: int = 0) -> int:
    return next((i for i, m in enumerate(messages) if i >= start and key in m), -1)


def test_ready_reloading_watchdog_and_stopping_reach_systemds_socket(model_root: Path) -> None:
    path = short_dir() / "notify"
    with listening(str(path)) as systemd:
        d = DaemonProcess(model_root)
        # WatchdogSec=0.4s: systemd would expect a WATCHDOG=1 at least that often; we send at half.
        d.start(wait=False, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})
        try:
            systemd.wait_for(lambda ms: _index(ms, "READY") >= 0)
            # READY=1 comes only once the daemon answers SERVING (models loaded).
            with ServiceClient(d.socket, timeout=10) as client:
                assert client.health() == "SERVING"
            ready = systemd.messages[_index(systemd.messages, "READY")]
            assert ready["READY"] == "1" and ready["STATUS"].startswith("serving (all-minilm-l6-v2) on unix:")
            assert _index(systemd.messages[: _index(systemd.messages, "READY")], "STOPPING") == -1

            # A reload: RELOADING=1 stamped with CLOCK_MONOTONIC, then READY=1 again.
            before = monotonic_usec()
            d.config["server"]["max_in_flight"] = 9
            d.write_config()
            d.signal(signal.SIGHUP)
            systemd.wait_for(lambda ms: (r := _index(ms, "RELOADING")) >= 0 and _index(ms, "READY", r) > r)
            after = monotonic_usec()
            reloading = _index(systemd.messages, "RELOADING")
            stamp = int(systemd.messages[reloading]["MONOTONIC_USEC"])
            assert before <= stamp <= after
            again = systemd.messages[_index(systemd.messages, "READY", reloading)]
            assert again["STATUS"] == "serving configuration generation 2"

            # A refused reload still ends the reloading state, and says why in the status line.
            d.config_path.write_text("server = [", encoding="utf-8")
            d.signal(signal.SIGHUP)
            systemd.wait_for(
                lambda ms: sum("RELOADING" in m for m in ms) == 2 and "refused" in ms[-1].get("STATUS", "")
            )
            assert systemd.messages[-1]["READY"] == "1"
            assert systemd.messages[-1]["STATUS"].startswith("reload refused, still serving generation 2:")

            # Watchdog pings keep coming while it serves (every 0.2 s).
            pings = systemd.count("WATCHDOG")
            systemd.wait_for(lambda ms: sum("WATCHDOG" in m for m in ms) >= pings + 3, timeout=30)
            assert all(m == {"WATCHDOG": "1"} for m in systemd.messages if "WATCHDOG" in m)

            d.signal(signal.SIGTERM)
            systemd.wait_for(lambda ms: _index(ms, "STOPPING") >= 0)
            assert d.stop(timeout=60) == 0
            stopping = systemd.messages[_index(systemd.messages, "STOPPING")]
            assert stopping["STOPPING"] == "1" and stopping["STATUS"].startswith("draining")
            assert _index(systemd.messages, "READY", _index(systemd.messages, "STOPPING")) == -1
        finally:
            d.stop()


def test_no_notify_socket_sends_nothing_and_a_watchdog_for_another_process_is_ignored() -> None:
    assert not Notifier.from_environment({}).enabled
    assert Notifier.from_environment({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000"}, pid=7).watchdog_s == 1.0
    mine = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "7"}
    assert Notifier.from_environment(mine, pid=7).watchdog_s == 1.0
    assert Notifier.from_environment(mine, pid=8).watchdog_s is None
    Notifier(None).ready("nothing listens")  # a no-op, not an error


def test_abstract_socket_names_and_a_missing_listener() -> None:
    name = f"ratatoskr-test-{os.getpid()}-{time.monotonic_ns()}"
    with listening("\0" + name) as systemd:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        notifier.ready("a\nsecond line is dropped")
        systemd.wait_for(lambda ms: len(ms) == 1, timeout=10)
        assert systemd.messages == [{"READY": "1", "STATUS": "a"}]
        notifier.close()
    gone = Notifier(str(short_dir() / "nobody-listens"))
    gone.watchdog()  # systemd gone: dropped with a warning, never raised
    gone.watchdog()
