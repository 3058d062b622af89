"""The first hour with the CLI: each mistake a new user makes gets one clear line, nothing else."""

from __future__ import annotations

import json
import os
import pty
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ratatoskr_client import DeadlineExceeded, ServiceClient
from tests.conftest import MODEL, REPO, DaemonProcess, clean_env, python_probe, run_ratatoskr, short_dir, toml_text


def _serve(config: dict[str, Any], *flags: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    path = short_dir() / "config.toml"
    path.write_text(toml_text(config), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "ratatoskr_server", "serve", "--config", str(path), *flags],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
        cwd=REPO,
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def test_version() -> None:
    run = run_ratatoskr("--version")
    assert run.returncode == 0 and run.stdout.strip() == "ratatoskr 0.1.0"


@pytest.mark.parametrize("command", ["status", "health"])
def test_no_daemon_says_how_to_start_one(command: str) -> None:
    path = short_dir() / "ratatoskr.sock"
    run = run_ratatoskr(command, "--socket", str(path))
    assert run.returncode == 1
    assert run.stderr == f"ratatoskr: no daemon is listening on {path}; start one with `ratatoskr serve`\n"


def test_a_bad_flag_shows_the_subcommands_usage() -> None:
    run = run_ratatoskr("embed", "--bogus", "hello")
    assert run.returncode == 2
    assert run.stderr.startswith("usage: ratatoskr embed ")
    assert run.stderr.rstrip().endswith("ratatoskr embed: error: unrecognized arguments: --bogus")


def test_tcp_port_in_use_is_one_line_and_leaves_no_socket(model_root: Path, busy_port: int) -> None:
    sock = short_dir() / "r.sock"
    server = {"socket_path": sock, "tcp_require_auth": False}
    config = {"server": server, "metrics": {"port": 0}, "local": {"model_dir": model_root}}
    run = _serve(config, "--tcp", f"127.0.0.1:{busy_port}", "--log-format", "text")
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr  # no gRPC C-core lines
    assert f"cannot listen on 127.0.0.1:{busy_port}: the port is in use by another process" in lines[0]
    assert "change server.tcp_port" in lines[0]
    assert not sock.exists()


def test_metrics_port_in_use_is_one_line_and_leaves_no_socket(model_root: Path, busy_port: int) -> None:
    sock = short_dir() / "r.sock"
    config = {"server": {"socket_path": sock}, "metrics": {"port": busy_port}, "local": {"model_dir": model_root}}
    run = _serve(config, "--log-format", "json")
    assert run.returncode == 1
    (line,) = run.stderr.strip().splitlines()
    record = json.loads(line)
    assert record["level"] == "error"
    assert f"cannot serve metrics on 127.0.0.1:{busy_port}: the port is in use" in record["msg"]
    assert "change metrics.port" in record["msg"]
    assert not sock.exists()


def test_serve_flags_and_the_serving_line(model_root: Path) -> None:
    d = DaemonProcess(model_root, server={"tcp_enabled": False})
    flag_socket = d.dir / "flag.sock"
    flags = ["--socket", str(flag_socket), "--tcp", "127.0.0.1:0", "--log-format", "json"]
    log = (d.dir / "flags.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ratatoskr_server", "serve", "--config", str(d.config_path), *flags],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=clean_env(),
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 60
        serving: dict[str, Any] = {}
        while not serving and time.monotonic() < deadline:
            assert proc.poll() is None, (d.dir / "flags.log").read_text()
            for line in (d.dir / "flags.log").read_text().splitlines():
                record = json.loads(line)
                if "serving" in record["msg"]:
                    serving = record
            time.sleep(0.05)
        assert serving, "no serving line"
        listen = serving["listen"]
        assert listen[0] == f"unix:{flag_socket}" and listen[1].startswith("127.0.0.1:")
        assert f"on unix:{flag_socket} and 127.0.0.1:" in serving["msg"]
        assert f"try: ratatoskr embed --socket {flag_socket} 'hello world'" in serving["msg"]
        with ServiceClient(listen[1], timeout=10) as client:
            assert client.health() == "SERVING"
        # A reload keeps the command-line settings: nothing reads as changed or needing a restart.
        with ServiceClient(flag_socket, timeout=10) as client:
            assert client.reload().needs_restart == []
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        log.close()


def test_second_ctrl_c_exits_at_once(model_root: Path) -> None:
    d = DaemonProcess(model_root, server={"shutdown_grace_s": 120}).start()
    texts = [f"sentence number {i} of a batch large enough to take a while, " * 8 for i in range(2000)]
    failed: list[BaseException] = []

    def call() -> None:
        try:
            with ServiceClient(d.socket, timeout=120) as client:
                client.embed(texts)
        except BaseException as err:
            failed.append(err)

    worker = threading.Thread(target=call)
    worker.start()
    deadline = time.monotonic() + 30
    with d.client(timeout=5) as client:
        while client.status().in_flight < 1:
            assert time.monotonic() < deadline and not failed, failed
            time.sleep(0.005)
    assert d.proc is not None
    d.signal(signal.SIGINT)  # drains: the call in flight has 120 s to finish
    while "draining" not in d.log():
        time.sleep(0.01)
    assert d.proc.poll() is None
    started = time.monotonic()
    d.signal(signal.SIGINT)
    assert d.proc.wait(timeout=10) == 130
    assert time.monotonic() - started < 10
    worker.join(timeout=60)
    assert failed  # the call was cut, visibly
    assert "second interrupt: exiting now without draining" in d.log()
    assert not d.socket.exists()


@pytest.mark.parametrize(("terminal", "expected"), [(True, "text"), (False, "json")])
def test_logs_are_text_on_a_terminal_and_json_otherwise(terminal: bool, expected: str) -> None:
    code = "from ratatoskr_server.telemetry.logs import resolve_format; print(resolve_format('auto'))"
    if not terminal:
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env())
        assert run.stdout.strip() == expected
        return
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=follower, env=clean_env(), text=True
        )
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(follower)
        os.close(leader)
    assert out.strip() == expected


def test_embed_timeout_is_honoured(daemon: DaemonProcess) -> None:
    texts = [f"text {i} " * 30 for i in range(60)]
    run = run_ratatoskr("embed", "--socket", str(daemon.socket), "--timeout", "0.001", *texts)
    assert run.returncode == 1
    assert run.stderr.startswith("ratatoskr: DEADLINE_EXCEEDED"), run.stderr
    with daemon.client() as client, pytest.raises(DeadlineExceeded):
        client.embed(texts, model=MODEL, timeout=0.001)


def test_the_daemon_starts_without_what_serving_does_not_need() -> None:
    """``ratatoskr serve`` imports what serving needs and nothing else (issue 17, start in a second):
    not httpx's own CLI with click and rich (model-signing installs click), not the tracing SDK while
    tracing is off, not cryptography or model-signing before a model is encrypted or signed. Each is
    tens of milliseconds; httpx still works, with its stub ``main``."""
    probe = (
        "import json, sys; import ratatoskr_server.cli as cli; cli._without_httpx_cli();"
        "import ratatoskr_server.daemon, ratatoskr_server.gateway, httpx;"
        "heavy = ('httpx._main', 'click', 'rich', 'pygments', 'opentelemetry.sdk', 'cryptography', 'argon2',"
        " 'model_signing', 'jinja2');"
        "print(json.dumps([m for m in heavy if sys.modules.get(m) is not None]), callable(httpx.main))"
    )
    assert python_probe(probe).split() == ["[]", "True"]
