"""Process lifecycle: draining on SIGTERM, socket ownership, SIGHUP reload, the in-flight limit."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from ratatoskr_client import ResourceExhausted, ServiceClient
from ratatoskr_client.types import EmbedResult
from tests.conftest import DaemonProcess, run_ratatoskr


def _wait_for_in_flight(d: DaemonProcess, at_least: int = 1, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    with d.client(timeout=5) as client:
        while time.monotonic() < deadline:
            if client.status().in_flight >= at_least:
                return
            time.sleep(0.005)
    raise AssertionError("the request never showed up as in flight")


def test_sigterm_lets_the_in_flight_call_finish(model_root: Path) -> None:
    d = DaemonProcess(model_root).start()
    texts = [f"sentence number {i} of a batch large enough to take a while" for i in range(1500)]
    outcome: dict[str, EmbedResult | BaseException] = {}

    def call() -> None:
        try:
            with ServiceClient(d.socket, timeout=60) as client:
                outcome["result"] = client.embed(texts)
        except BaseException as err:
            outcome["result"] = err

    worker = threading.Thread(target=call)
    worker.start()
    _wait_for_in_flight(d)
    d.signal(signal.SIGTERM)
    worker.join(timeout=60)
    assert d.stop(timeout=60) == 0, d.log()
    result = outcome.get("result")
    assert isinstance(result, EmbedResult), f"{result!r}\n{d.log()}"
    assert len(result.vectors) == len(texts)
    assert not d.socket.exists()  # removed on the way out
    draining = [r for r in d.records() if r.get("msg") == "draining"]
    assert draining and draining[0].get("in_flight") == 1, d.log()


def test_stale_socket_is_replaced_and_live_one_refused(model_root: Path) -> None:
    d = DaemonProcess(model_root)
    d.socket.parent.mkdir(mode=0o700, parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(d.socket))  # bound but never listening: what a crashed daemon leaves
    stale.close()
    d.start()
    try:
        with d.client(timeout=10) as client:
            assert client.health() == "SERVING"
        assert any(r.get("msg") == "replaced stale socket" for r in d.records())

        second = run_ratatoskr("serve", "--config", str(d.config_path), timeout=60)
        assert second.returncode == 1
        assert "already listening" in second.stdout + second.stderr
        assert "Traceback" not in second.stdout + second.stderr
        with d.client(timeout=10) as client:  # the first daemon is untouched
            assert client.health() == "SERVING"
    finally:
        assert d.stop() == 0


def test_sighup_reloads_configuration(model_root: Path) -> None:
    d = DaemonProcess(model_root).start()
    try:
        with d.client(timeout=10) as client:
            assert client.status().max_in_flight == 256
        d.config["server"]["max_in_flight"] = 7
        d.config["server"]["tcp_port"] = 1
        d.write_config()
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        with d.client(timeout=10) as client:
            while client.status().max_in_flight != 7 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.status().max_in_flight == 7
            # A broken file is refused and the running configuration kept.
            d.config_path.write_text("server = [", encoding="utf-8")
            result = client.reload()
            assert not result.applied and "not valid TOML" in result.message
            assert client.status().max_in_flight == 7
        (line,) = [r for r in d.records() if r.get("msg") == "configuration reloaded"]
        assert line["changed"] == ["server.max_in_flight"]
        assert line["needs_restart"] == ["server.tcp_port"]
    finally:
        assert d.stop() == 0


def test_in_flight_limit_answers_resource_exhausted(model_root: Path) -> None:
    d = DaemonProcess(model_root, server={"max_in_flight": 1}).start()
    try:
        texts = [f"busy sentence {i} for the limiter" for i in range(800)]
        slow = threading.Thread(target=lambda: d.client(timeout=60).embed(texts))
        slow.start()
        _wait_for_in_flight(d)
        with d.client(timeout=10) as client, pytest.raises(ResourceExhausted) as info:
            client.embed(["one more"])
        assert "max_in_flight" in info.value.message
        assert info.value.retry_after_s == 1.0
        slow.join(timeout=60)
        with d.client(timeout=10) as client:  # capacity is back once the slow call ends
            assert len(client.embed(["now it fits"]).vectors) == 1
    finally:
        assert d.stop() == 0


def test_an_empty_config_file_is_not_applied_on_reload(model_root: Path) -> None:
    d = DaemonProcess(model_root, aliases={"mini": "openai/gpt-4o-mini"}).start()
    try:
        d.config_path.write_text("", encoding="utf-8")  # caught while an editor rewrites it
        with d.client(timeout=10) as client:
            result = client.reload()
            assert not result.applied and "is empty (being rewritten?)" in result.message
            assert client.health() == "SERVING"
        d.write_config()
        with d.client(timeout=10) as client:
            assert client.reload().applied
    finally:
        assert d.stop() == 0


def test_an_unexpected_failure_at_start_drains_and_removes_the_socket(model_root: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken-checkpoint"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert"}')  # no weights: the importer fails oddly
    d = DaemonProcess(model_root, local={"preload": ["broken"]}, models={"broken": {"source": str(broken)}}).start(
        wait=False
    )
    assert d.proc is not None
    assert d.proc.wait(timeout=60) == 1, d.log()
    assert "preloading models failed; the daemon cannot serve" in d.log()
    assert "stopped" in [r.get("msg") for r in d.records()]
    assert not d.socket.exists()


def test_registry_refresh_at_start_does_not_hold_serving_back(model_root: Path) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/api/v1/models"
        d = DaemonProcess(
            model_root,
            registry={"refresh_at_start": True, "openrouter_url": url, "refresh_ollama": False},
            http={"total_timeout_s": 300, "read_timeout_s": 300},
        )
        started = time.monotonic()
        d.start()  # waits for SERVING (at most 60 s) while the refresh is still waiting for an answer
        try:
            assert time.monotonic() - started < 60
        finally:
            assert d.stop() == 0


def test_health_is_not_serving_until_the_preload_models_are_loaded(model_root: Path) -> None:
    d = DaemonProcess(model_root).start(wait=False)
    try:
        answers: list[str] = []
        deadline = time.monotonic() + 60
        while not d.socket.exists():
            assert time.monotonic() < deadline and d.proc is not None and d.proc.poll() is None, d.log()
            time.sleep(0.005)
        with ServiceClient(d.socket) as client:
            while not answers or answers[-1] != "SERVING":
                assert time.monotonic() < deadline, answers
                answers.append(client.health(timeout=5))
                if answers[-1] == "SERVING":
                    # "model loaded" is logged before health turns SERVING, never after.
                    assert "model loaded" in d.log(), answers
    finally:
        assert d.stop() == 0
