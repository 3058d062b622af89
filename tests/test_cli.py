"""The ratatoskr command: machine output, in-process fallback, and one-line failures."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import MODEL, TINY_NLI, DaemonProcess, run_ratatoskr, short_dir, toml_text


def test_status_health_and_embed_through_the_daemon(daemon: DaemonProcess) -> None:
    sock = str(daemon.socket)
    health = run_ratatoskr("health", "--socket", sock)
    assert health.returncode == 0 and health.stdout.strip() == "SERVING"
    status = json.loads(run_ratatoskr("status", "--json", "--socket", sock).stdout)
    assert status["state"] == "serving" and status["models"][0]["name"] == MODEL
    embed = run_ratatoskr("embed", "--json", "--socket", sock, "hello", "world")
    assert embed.returncode == 0, embed.stderr
    data = json.loads(embed.stdout)
    assert data["dimension"] == 384 and len(data["vectors"]) == 2
    listed = json.loads(
        run_ratatoskr("models", "list", "--json", "--socket", sock, "--config", str(daemon.config_path)).stdout
    )
    states = {m["name"]: m["state"] for m in listed}
    assert states[MODEL] == "ready" and states[TINY_NLI] in ("ready", "not loaded")  # loaded once used


def test_embed_without_a_daemon_runs_in_process(model_root: Path) -> None:
    config = short_dir() / "c.toml"
    config.write_text(toml_text({"local": {"model_dir": model_root}}), encoding="utf-8")
    run = run_ratatoskr("embed", "--socket", str(short_dir() / "none.sock"), "--config", str(config), "offline")
    assert run.returncode == 0, run.stderr
    assert "384 dims" in run.stdout


def test_failures_are_one_line(daemon: DaemonProcess) -> None:
    run = run_ratatoskr("embed", "--socket", str(daemon.socket), "--model", "nope", "x")
    assert run.returncode == 1
    assert run.stderr.strip().startswith("ratatoskr: NOT_FOUND: unknown model 'nope'")
    none = short_dir() / "none.sock"
    down = run_ratatoskr("health", "--socket", str(none), "--timeout", "0.5")
    assert down.returncode == 1
    assert down.stderr == f"ratatoskr: no daemon is listening on {none}; start one with `ratatoskr serve`\n"


def test_models_import_cli(tmp_path: Path) -> None:
    out = run_ratatoskr("models", "import", "--model-dir", str(tmp_path), "--json", "--quantize", "int8")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["manifest"]["dimension"] == 384
    assert data["quantized"]["min_cosine"] >= 0.95  # per-channel int8 keeps MiniLM close to fp32
    assert data["quantized"]["int8_mb"] < 0.4 * data["quantized"]["fp32_mb"]
    assert (tmp_path / "all-minilm-l6-v2-int8" / "manifest.json").is_file()
    again = run_ratatoskr("models", "import", "--model-dir", str(tmp_path))
    assert again.returncode == 1 and "--force" in again.stderr
    skipped = run_ratatoskr("models", "import", "--model-dir", str(tmp_path), "--if-missing")
    assert skipped.returncode == 0 and "present" in skipped.stdout
