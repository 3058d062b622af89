"""Secrets that are not API keys: credential headers, query keys, URL user-info; in every output."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from ratatoskr_client import Unavailable
from ratatoskr_client.types import ChatOptions, Message
from ratatoskr_server.config import load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.telemetry.logs import JsonFormatter, Redactor, TextFormatter
from tests.conftest import REPO, clean_env, short_dir, toml_text

#: None of these has the shape of a key: only configuration-driven redaction can catch them.
HEADER_SECRET = "plainheadervalue42"
QUERY_SECRET = "plainqueryvalue77"
URL_PASSWORD = "plainurlpassword99"
PROVIDERS = {
    "corp": {
        "kind": "openai_compat",
        "base_url": f"http://svc:{URL_PASSWORD}@127.0.0.1:9/v1",
        "headers": {"X-Api-Token": HEADER_SECRET, "HTTP-Referer": "https://app.example"},
        "query": {"key": QUERY_SECRET, "api-version": "2024-10-21"},
        "local": True,
    }
}
SECRETS = (HEADER_SECRET, QUERY_SECRET, URL_PASSWORD)


def test_config_check_masks_every_kind_of_secret(model_root: Path) -> None:
    path = short_dir() / "config.toml"
    path.write_text(toml_text({"local": {"model_dir": model_root}, "providers": PROVIDERS}), encoding="utf-8")
    for extra in ([], ["--json"]):
        run = subprocess.run(
            [sys.executable, "-m", "ratatoskr_server", "config", "check", "--config", str(path), *extra],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
            cwd=REPO,
        )
        assert run.returncode == 0, run.stderr
        for secret in SECRETS:
            assert secret not in run.stdout
        assert "https://app.example" in run.stdout and "2024-10-21" in run.stdout  # not secrets: shown
        assert "http://********@127.0.0.1:9/v1" in run.stdout


async def test_errors_to_callers_carry_no_url_credentials() -> None:
    gw = EmbeddedGateway(load_settings(local={"preload": [], "auto_import_default": False}, providers=PROVIDERS))
    try:
        with pytest.raises(Unavailable) as info:
            await gw.chat([Message("user", "hi")], ChatOptions(model="corp/m"))
    finally:
        await gw.close()
    assert "cannot connect to http://********@127.0.0.1:9/v1" in info.value.message
    for secret in (*SECRETS, "svc:"):
        assert secret not in info.value.message


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
def test_tracebacks_and_structured_extras_are_scrubbed(formatter: logging.Formatter) -> None:
    settings = load_settings(local={"preload": []}, providers=PROVIDERS)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(Redactor(settings.secret_values()))
    handler.setFormatter(formatter)
    log = logging.getLogger("test.secrets")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        try:
            raise RuntimeError(f"upstream said: bad token {HEADER_SECRET}")
        except RuntimeError:
            log.exception("call failed", extra={"urls": [f"http://127.0.0.1:9/v1?key={QUERY_SECRET}"]})
        log.info("nested", extra={"detail": {"auth": {"password": URL_PASSWORD}}})
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "RuntimeError: upstream said: bad token ********" in text
    assert "Traceback" in text
    for secret in SECRETS:
        assert secret not in text
    if isinstance(formatter, JsonFormatter):
        first, second = (json.loads(line) for line in text.splitlines() if line.startswith("{"))
        assert first["urls"] == ["http://127.0.0.1:9/v1?key=********"]
        assert second["detail"] == {"auth": {"password": "********"}}
