"""Configuration: source order, ${VAR} secrets, the secrets file's mode, masking, readable errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ratatoskr_server.config import ConfigError, load_settings
from tests.conftest import REPO, run_ratatoskr, toml_text

KEY = "sk-test-0123456789abcdefghijklmnop"


def _write(tmp_path: Path, data: dict[str, object]) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(toml_text(data), encoding="utf-8")
    return path


def test_defaults_then_toml_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in __import__("os").environ if v.startswith("RATATOSKR_")]:
        monkeypatch.delenv(var)
    assert load_settings().server.tcp_port == 9741
    path = _write(tmp_path, {"server": {"tcp_port": 9800, "max_in_flight": 5}})
    assert load_settings(path).server.tcp_port == 9800
    monkeypatch.setenv("RATATOSKR_SERVER__TCP_PORT", "9900")
    settings = load_settings(path)
    assert settings.server.tcp_port == 9900  # the environment wins over the file
    assert settings.server.max_in_flight == 5  # the file still fills the rest
    monkeypatch.setenv("RATATOSKR_CONFIG", str(path))
    assert load_settings().server.max_in_flight == 5


def test_variables_expand_from_secrets_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(f'OPENAI_API_KEY = "{KEY}"\n', encoding="utf-8")
    secrets.chmod(0o600)
    monkeypatch.setenv("GROQ_KEY", "gsk-from-the-environment")
    path = _write(
        tmp_path,
        {
            "secrets_file": secrets,
            "providers": {
                "openai": {"kind": "openai_compat", "base_url": "https://api.example", "api_key": "${OPENAI_API_KEY}"},
                "groq": {"kind": "openai_compat", "base_url": "https://groq.example", "api_key": "${GROQ_KEY}"},
            },
        },
    )
    settings = load_settings(path)
    assert settings.providers["openai"].api_key is not None
    assert settings.providers["openai"].api_key.get_secret_value() == KEY
    assert settings.providers["groq"].api_key is not None
    assert settings.providers["groq"].api_key.get_secret_value() == "gsk-from-the-environment"
    assert KEY not in json.dumps(settings.masked())


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_secrets_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('A = "b"\n', encoding="utf-8")
    secrets.chmod(mode)
    path = _write(tmp_path, {"secrets_file": secrets})
    with pytest.raises(ConfigError, match=r"must be 0600 or 0400 \(run: chmod 600"):
        load_settings(path)


def test_errors_name_the_setting(tmp_path: Path) -> None:
    path = _write(tmp_path, {"server": {"tcp_port": 70000, "socket_mode": "rw"}})
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "server.tcp_port" in str(info.value) and "server.socket_mode" in str(info.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    bad = _write(tmp_path, {"sever": {"tcp_port": 1}})
    with pytest.raises(ConfigError, match="sever"):
        load_settings(bad)


def test_daemon_refuses_to_start_with_open_secrets_file(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('A = "b"\n', encoding="utf-8")
    secrets.chmod(0o644)
    path = _write(tmp_path, {"secrets_file": secrets})
    run = run_ratatoskr("serve", "--config", str(path))
    assert run.returncode == 2
    assert "0600 or 0400" in run.stderr and "Traceback" not in run.stderr


def test_config_check_masks_secrets(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {"providers": {"openai": {"kind": "openai_compat", "base_url": "https://a.example", "api_key": KEY}}},
    )
    for extra in ([], ["--json"]):
        run = run_ratatoskr("config", "check", "--config", str(path), *extra)
        assert run.returncode == 0, run.stderr
        assert KEY not in run.stdout + run.stderr
        assert "providers.openai.api_key" in run.stdout or '"api_key": "**********"' in run.stdout


def test_example_config_is_valid_as_shipped() -> None:
    settings = load_settings(REPO / "config.example.toml")
    assert settings.local.default_embed_model == "all-minilm-l6-v2"


def test_example_config_documents_every_setting() -> None:
    import tomllib

    from ratatoskr_server.config import Settings, flatten

    documented = (REPO / "config.example.toml").read_text(encoding="utf-8")
    parsed = dict(flatten(tomllib.loads(documented)))
    tables = {"models", "providers", "aliases", "presets", "callers", "routes"}
    for key, _ in flatten(Settings().model_dump(mode="json", exclude=tables)):
        _section, _, name = key.rpartition(".")
        assert key in parsed or f"# {name} =" in documented, f"{key} is not documented in config.example.toml"
    for field in ("path", "task", "device", "pinned"):
        assert f"{field} =" in documented
    providers = tomllib.loads(documented)["providers"]
    for field in ("kind", "base_url", "api_key", "api_key_header", "headers", "query", "local", "enabled", "models"):
        assert f"{field} =" in documented, field
    assert "completion_only =" in documented
    assert "# candidates =" in documented  # [routes.NAME]
    for field in ("key_hash", "scopes", "privacy_ceiling", "budget_scope", "rpm", "tpm", "enabled"):
        assert f"# {field} =" in documented, f"callers.NAME.{field}"
    assert {"openai", "openrouter", "together", "groq", "fireworks", "deepinfra", "anyscale", "modal", "azure"} <= set(
        providers
    )
    assert {"vllm", "tgi", "localai", "llamacpp", "llamafile", "lmstudio", "anthropic", "ollama", "hf"} <= set(
        providers
    )
    assert not any(p["enabled"] for p in providers.values())  # ready to enable, off until asked
