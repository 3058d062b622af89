"""Configuration mistakes caught before a request fails: by `serve` (exit 2) and by `config check`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MODEL, REPO, clean_env, short_dir, toml_text


def _run(command: str, config: dict[str, Any] | str, **env: str) -> subprocess.CompletedProcess[str]:
    path = short_dir() / "config.toml"
    path.write_text(config if isinstance(config, str) else toml_text(config), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "ratatoskr_server", *command.split(), "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(**env),
        cwd=REPO,
    )


def _base(model_dir: Path, **local: Any) -> dict[str, Any]:
    return {
        "server": {"socket_path": short_dir() / "r.sock"},
        "metrics": {"port": 0},
        "local": {"model_dir": model_dir, **local},
    }


def _models_in(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()}


@pytest.mark.parametrize("key", ["default_embed_model", "preload"])
def test_a_typo_in_a_model_name_stops_the_daemon(model_root: Path, key: str) -> None:
    before = _models_in(model_root)
    value: Any = "all-minilm-l6-v3" if key == "default_embed_model" else ["all-minilm-l6-v3"]
    config = _base(model_root, **{key: value})
    served = _run("serve", config)
    assert served.returncode == 2
    name = "local.default_embed_model" if key == "default_embed_model" else "local.preload[0]"
    expected = (
        f"{name}: 'all-minilm-l6-v3' is neither a local model (in {model_root}: all-minilm-l6-v2, tiny-nli) "
        "nor provider/model; did you mean 'all-minilm-l6-v2'?"
    )
    assert expected in served.stderr
    assert _models_in(model_root) == before  # no second copy of MiniLM under the typo'd name
    checked = _run("config check", config)
    assert checked.returncode == 2 and f"# error: {expected}" in checked.stdout


def test_models_import_uses_the_default_models_own_name(model_root: Path, tmp_path: Path) -> None:
    config = _base(tmp_path, default_embed_model="all-minilm-l6-v3")
    run = _run("models import --if-missing", config)
    assert run.returncode == 0, run.stderr
    assert _models_in(tmp_path) == {MODEL}


def test_provider_model_names_must_name_an_enabled_provider(model_root: Path) -> None:
    providers = {"ollama": {"kind": "ollama", "base_url": "http://127.0.0.1:11434", "enabled": False}}
    config = {**_base(model_root, default_classify_model="olama/llama3"), "providers": providers}
    run = _run("config check", config)
    assert run.returncode == 2
    assert (
        "local.default_classify_model: 'olama/llama3' names provider 'olama', which is not configured "
        "(providers: ollama); did you mean 'ollama'?"
    ) in run.stdout
    config["local"]["default_classify_model"] = "ollama/llama3"
    run = _run("config check", config)
    assert "'ollama/llama3' names provider 'ollama', which is disabled (providers.ollama.enabled)" in run.stdout


def test_an_unset_variable_in_an_enabled_provider(model_root: Path) -> None:
    providers = {"openai": {"kind": "openai_compat", "base_url": "https://api.openai.com/v1", "api_key": "${RT_K}"}}
    config = {**_base(model_root), "providers": providers}
    served = _run("serve", config)
    assert served.returncode == 2
    assert "providers.openai.api_key: ${RT_K} is set in neither the secrets file nor the environment" in served.stderr
    checked = _run("config check", config)
    assert checked.returncode == 0
    assert "# warning: providers.openai.api_key: ${RT_K} is set in neither" in checked.stdout
    assert _run("config check", config, RT_K="sk-x").stdout.count("# warning") == 0
    # A disabled provider's unset key is expected (config.example.toml lists every provider).
    providers["openai"]["enabled"] = False
    assert "RT_K" not in _run("config check", config).stdout


def test_base_url_without_a_scheme(model_root: Path) -> None:
    providers = {"local": {"kind": "openai_compat", "base_url": "127.0.0.1:8080/v1"}}
    run = _run("config check", {**_base(model_root), "providers": providers})
    assert run.returncode == 2
    assert "providers.local.base_url: Value error, base_url '127.0.0.1:8080/v1' needs a scheme and a host" in run.stderr


def test_an_api_key_written_in_the_file_is_a_warning(model_root: Path) -> None:
    providers = {"groq": {"kind": "openai_compat", "base_url": "https://api.groq.com/openai/v1", "api_key": "gsk_1"}}
    run = _run("config check", {**_base(model_root), "providers": providers})
    assert run.returncode == 0
    assert "# warning: providers.groq.api_key: the key is written in " in run.stdout
    assert 'write "${GROQ_API_KEY}"' in run.stdout
    assert "gsk_1" not in run.stdout  # masked in the listing too


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[local]\npreloads = []\n", "local.preloads: unknown setting; did you mean 'preload'?"),
        (
            "[local]\nmax_batch_size = 32\n",
            "local.max_batch_size: unknown setting; did you mean 'batching.max_batch_size' (in [local.batching])?",
        ),
        (
            '[providers.x]\nkindd = "ollama"\nkind = "ollama"\nbase_url = "http://127.0.0.1:1"\n',
            "providers.x.kindd: unknown setting; did you mean 'kind'?",
        ),
        ("[sever]\ntcp_port = 1\n", "sever: unknown setting; did you mean 'server'?"),
    ],
)
def test_unknown_keys_get_did_you_mean(toml: str, expected: str) -> None:
    run = _run("config check", toml)
    assert run.returncode == 2
    assert expected in run.stderr
    assert "Traceback" not in run.stderr


def test_the_default_configuration_is_clean(tmp_path: Path) -> None:
    """No file at all: the default model is imported on first use, so nothing is wrong."""
    run = subprocess.run(
        [sys.executable, "-m", "ratatoskr_server", "config", "check"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(HOME=str(tmp_path), RATATOSKR_CONFIG=""),
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "# error" not in run.stdout and "# warning" not in run.stdout
    assert not os.listdir(tmp_path)  # checking writes nothing
