"""What README.md and deploy/ tell a person to run, run or checked as written.

Commands that need the internet, root or a container engine cannot run here; what can be checked
offline is: every configuration passes ``config check``, every ``ratatoskr`` command line parses,
every grpcurl command answers against a real daemon, the Python snippets run, the Makefile hands
one configuration to every step, and the deploy files are what their README says.
"""

from __future__ import annotations

import os
import plistlib
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ratatoskr_server.cli import build_parser
from tests.conftest import MODEL, REPO, TINY_NLI, DaemonProcess, clean_env, short_dir
from tests.upstreams import ollama_double
from tests.upstreams.harness import serve

DOCS = [REPO / "README.md", REPO / "deploy" / "README.md"]
DEPLOY = REPO / "deploy"
VENV_BIN = Path(sys.executable).parent
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(lang: str) -> list[tuple[Path, str]]:
    """Fenced code blocks of one language from both READMEs."""
    return [(doc, m.group(2)) for doc in DOCS for m in _FENCE.finditer(doc.read_text()) if m.group(1) == lang]


def shell_lines() -> list[tuple[Path, str]]:
    """Every command line of the sh blocks as written, continuation lines joined."""
    out = []
    for doc, body in blocks("sh"):
        for line in body.replace("\\\n", " ").splitlines():
            if shlex.split(line, comments=True):
                out.append((doc, line))
    return out


def _command(words: list[str]) -> list[str]:
    """The command itself: without sudo, `sudo -u USER`, env assignments or a leading `cd ... &&`."""
    while words:
        if words[0] == "sudo":
            words = words[3:] if words[1:2] == ["-u"] else words[1:]
        elif re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            words = words[1:]
        else:
            break
    return words


def run_config_check(path: Path, model_root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ratatoskr_server", "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(RATATOSKR_LOCAL__MODEL_DIR=str(model_root), **env),
        cwd=REPO,
    )


# ------------------------------------------------------------------------------ configurations
def test_configs_in_docs_and_deploy_pass_config_check(model_root: Path, tmp_path: Path) -> None:
    """config.example.toml, every toml block of the READMEs and the Kubernetes base's config.toml
    (tests/test_deploy.py checks the built ConfigMaps, the overlay's included).

    The model directory is the test's (it holds the default model, as /models does in the image).
    """
    paths = [REPO / "config.example.toml", DEPLOY / "k8s" / "base" / "config.toml"]
    for i, (_doc, body) in enumerate(blocks("toml")):
        paths.append(tmp_path / f"block{i}.toml")
        paths[-1].write_text(body)
    for path in paths:
        tomllib.loads(path.read_text())
        run = run_config_check(path, model_root)
        assert run.returncode == 0, f"{path}:\n{run.stdout}\n{run.stderr}"
        assert "# error" not in run.stdout, run.stdout


def test_the_readme_chat_command_has_a_valid_configuration(model_root: Path) -> None:
    """`RATATOSKR_PROVIDERS__OPENAI__ENABLED=true make run CONFIG=config.example.toml` with the key exported."""
    (line,) = [line for _doc, line in shell_lines() if "OPENAI__ENABLED" in line]
    assert "CONFIG=config.example.toml" in line
    example = REPO / "config.example.toml"
    enabled = {"RATATOSKR_PROVIDERS__OPENAI__ENABLED": "true"}
    ok = run_config_check(example, model_root, OPENAI_API_KEY="sk-test-0000", **enabled)
    assert ok.returncode == 0 and "# warning" not in ok.stdout, ok.stdout + ok.stderr
    # Without the key exported, the daemon refuses to start and says which variable is missing.
    refused = subprocess.run(
        [sys.executable, "-m", "ratatoskr_server", "serve", "--config", str(example)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(RATATOSKR_LOCAL__MODEL_DIR=str(model_root), **enabled),
        cwd=REPO,
    )
    assert refused.returncode == 2
    assert "providers.openai.api_key: ${OPENAI_API_KEY} is set in neither" in refused.stderr


def test_make_run_hands_one_configuration_to_every_step() -> None:
    dry = subprocess.run(
        ["make", "-n", "run", "CONFIG=my config.toml", "ARGS=--tcp 127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert dry.returncode == 0, dry.stderr
    steps = [line for line in dry.stdout.splitlines() if "bin/ratatoskr " in line]
    assert [line.split("bin/ratatoskr ")[1].split(" --")[0] for line in steps] == [
        "models import",
        "serve",
    ], steps
    for line in steps:
        assert '--config "my config.toml"' in line
    assert steps[1].endswith("--tcp 127.0.0.1:0")
    assert "--all-groups" not in dry.stdout  # make run never installs the test set


# ------------------------------------------------------------------------------ commands
def test_every_ratatoskr_command_line_parses() -> None:
    parser = build_parser()
    checked = 0
    for doc, line in shell_lines():
        words = _command(shlex.split(line, comments=True))
        if not words or not words[0].endswith("ratatoskr") or words[0].endswith("/ratatoskr.service"):
            continue
        try:
            parser.parse_args(words[1:])
        except SystemExit:
            pytest.fail(f"{doc.name}: `{line}` does not parse")
        checked += 1
    assert checked >= 10


@pytest.fixture(scope="module")
def docs_daemon(model_root: Path) -> Iterator[tuple[DaemonProcess, Path]]:
    """A daemon where the READMEs' default socket is, with an NLI default and an Ollama provider."""
    runtime = short_dir()
    with serve(ollama_double.routes()) as ollama:
        d = DaemonProcess(
            model_root,
            server={"socket_path": runtime / "ratatoskr" / "ratatoskr.sock"},
            local={"default_nli_model": TINY_NLI, "preload": [MODEL]},
            providers={"ollama": {"kind": "ollama", "base_url": ollama.base_url, "local": True}},
        )
        d.socket = runtime / "ratatoskr" / "ratatoskr.sock"
        d.start()
        yield d, runtime
        d.stop()


def test_every_grpcurl_command_runs_as_written(docs_daemon: tuple[DaemonProcess, Path]) -> None:
    d, runtime = docs_daemon
    tcp = d.tcp_address()
    commands = [(doc, line) for doc, line in shell_lines() if _command(shlex.split(line, True))[:1] == ["grpcurl"]]
    assert len(commands) >= 6
    for doc, line in commands:
        # Addresses of deployments that cannot exist here become this daemon's; the rest runs verbatim
        # in a shell, so quoting, variables and comments are what a person's shell sees.
        command = line.strip().removeprefix("sudo ").replace("/run/ratatoskr/ratatoskr.sock", str(d.socket))
        command = re.sub(r"(127\.0\.0\.1|localhost):9741\b", tcp, command)
        run = subprocess.run(
            ["bash", "-c", command],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(XDG_RUNTIME_DIR=str(runtime), PATH=f"{VENV_BIN}:{os.environ['PATH']}"),
        )
        assert run.returncode == 0, f"{doc.name}: `{line}`\n{run.stderr}"
        assert run.stdout.strip(), line


def test_python_snippets_run_with_the_venv_python(docs_daemon: tuple[DaemonProcess, Path]) -> None:
    _daemon, runtime = docs_daemon
    snippets = blocks("python")
    assert len(snippets) >= 2
    for doc, code in snippets:
        run = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=120,
            env=clean_env(XDG_RUNTIME_DIR=str(runtime)),
            cwd=short_dir(),  # not the checkout: the installed package, as a user's service sees it
        )
        assert run.returncode == 0, f"{doc.name}:\n{code}\n{run.stderr}"
        assert run.stdout.strip(), code
    assert "`.venv/bin/python`" in (REPO / "README.md").read_text().split("```python")[0]


# ------------------------------------------------------------------------------ deploy files
def test_dockerfile_builds_the_runtime_set_without_a_compiler() -> None:
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    runs = " ".join(re.findall(r"^RUN (.*(?:\\\n.*)*)", dockerfile, re.MULTILINE))
    assert "make install" in runs and "INSTALL_GROUPS=" in runs
    for forbidden in ("[dev]", "--all-groups", "--group dev", "gcc", "build-essential", "cmake", "g++"):
        assert forbidden not in runs, forbidden
    runtime_stage = dockerfile.split("FROM ${PYTHON_IMAGE}\n", 1)[1]
    user = re.search(r"^USER (\d+):(\d+)$", runtime_stage, re.MULTILINE)
    assert user and int(user.group(1)) != 0
    assert re.search(r'HEALTHCHECK .*\n\s+CMD \["ratatoskr", "health"', runtime_stage)
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in (".venv", ".tools", "ratatoskr_client/_proto", ".git"):
        assert path in ignored
    assert not list((DEPLOY / "docker").glob("*.dockerignore")), "the legacy builder reads only the root file"


def test_make_install_is_the_runtime_set() -> None:
    """What `make install` (the Dockerfile, systemd and launchd installs) puts in the venv."""
    dry = subprocess.run(
        ["make", "-n", "install", "PREFIX=/opt/x", "INSTALL_GROUPS="], capture_output=True, text=True, cwd=REPO
    )
    assert dry.returncode == 0, dry.stderr
    (sync,) = [line for line in dry.stdout.splitlines() if 'UV_PROJECT_ENVIRONMENT="/opt/x"' in line]
    assert "--frozen" in sync and "--no-editable" in sync and "--no-default-groups" in sync
    assert "--group" not in sync


def test_kubernetes_and_launchd_files_parse() -> None:
    for manifest in sorted((DEPLOY / "k8s").rglob("*.yaml")):
        assert all(doc.get("kind") for doc in yaml.safe_load_all(manifest.read_text()) if doc), manifest
    raw = (DEPLOY / "launchd" / "dev.ratatoskr.daemon.plist").read_bytes()
    for data in (raw, raw.replace(b"__HOME__", b"/Users/someone")):
        plist = plistlib.loads(data)
        assert plist["ProgramArguments"][1] == "serve"


@pytest.mark.parametrize(("unit", "user"), [("ratatoskr.service", False), ("ratatoskr-user.service", True)])
def test_systemd_units_pass_systemd_analyze_verify(unit: str, user: bool, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    text = (DEPLOY / "systemd" / unit).read_text()
    ratatoskr = VENV_BIN / "ratatoskr"  # the unit's binary must exist for verify to pass
    text = text.replace("/opt/ratatoskr/bin/ratatoskr", str(ratatoskr))
    text = text.replace("%h/.local/share/ratatoskr/bin/ratatoskr", str(ratatoskr))
    assert str(ratatoskr) in text
    (tmp_path / unit).write_text(text)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    command = [analyze, *(["--user"] if user else []), "verify", str(tmp_path / unit)]
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    )
    assert run.returncode == 0 and not run.stderr.strip(), run.stdout + run.stderr
