"""Secrets never reach the log, whatever path they take into it."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from ratatoskr_client import NotFound
from ratatoskr_server.redact import MASK, scrub
from ratatoskr_server.telemetry.logs import JsonFormatter, Redactor
from tests.conftest import DaemonProcess

KEY = "sk-live-abcdefghijklmnopqrstuvwxyz0123"
#: Shaped like no key (no sk-, hf_ or Bearer): only being configured can get it masked.
PASSPHRASE = "correct-horse-battery-staple-42"
#: The same shape; configured only by a reload, so before that it is the control.
ROTATED = "correct-horse-battery-staple-43"


def _capture(secrets: list[str]) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(Redactor(secrets))
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.redaction.{id(stream)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger, stream


def test_configured_secrets_and_key_shapes_are_masked() -> None:
    logger, stream = _capture(["my-own-token-value"])
    logger.info("calling upstream with %s", "my-own-token-value")
    logger.info("header", extra={"authorization": "Bearer abcdefghijklmnop", "note": f"key={KEY}"})
    text = stream.getvalue()
    assert "my-own-token-value" not in text and "abcdefghijklmnop" not in text and KEY not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["msg"] == f"calling upstream with {MASK}"
    assert lines[1]["authorization"] == MASK and lines[1]["note"] == f"key={MASK}"


@pytest.mark.parametrize(
    "shortest", ["sk-" + "a" * 12, "hf_" + "a" * 12, "rtk_" + "a" * 12, "Bearer " + "a" * 8, "bearer\t" + "a" * 8]
)
def test_the_shortest_key_shapes_are_masked_in_every_field(shortest: str) -> None:
    # Texts shorter than the shortest key shape are not searched: these are the shapes at that length.
    logger, stream = _capture([])
    logger.info(shortest, extra={"field": shortest, "nested": {"inner": [shortest]}, "count": 3, "ratio": 0.5})
    line = json.loads(stream.getvalue())
    assert shortest not in stream.getvalue()
    assert line["msg"] == line["field"] == line["nested"]["inner"][0] == MASK
    assert (line["count"], line["ratio"]) == (3, 0.5)
    assert scrub(shortest[:-1]) == shortest[:-1]  # one character short is no key


def test_daemon_log_never_contains_a_configured_key(model_root: Path) -> None:
    d = DaemonProcess(
        model_root,
        providers={"openai": {"kind": "openai_compat", "base_url": "https://api.example", "api_key": KEY}},
        logging={"level": "DEBUG"},
    ).start()
    try:
        d.config["providers"]["openai"]["api_key"] = KEY + "-rotated"
        d.write_config()
        with d.client(timeout=10) as client:
            assert client.reload().applied
            client.embed(["hello"])
    finally:
        assert d.stop() == 0
    log = d.log()
    assert "configuration reloaded" in log
    assert KEY not in log and "abcdefghijklmnopqrstuvwxyz" not in log


def test_a_configured_secret_is_masked_in_the_daemon_log_because_it_is_configured(model_root: Path) -> None:
    """The request line logs the model name a client sent, verbatim: any caller can put text there.

    Sent the configured passphrase, it comes out masked. Sent a look-alike that is not configured, it
    comes out as sent, which proves that this path logs the text and that no shape rule masks it;
    once a reload configures the look-alike, it is masked too.
    """
    assert scrub(PASSPHRASE) == PASSPHRASE and scrub(ROTATED) == ROTATED  # no key-shape rule catches them
    d = DaemonProcess(
        model_root,
        local={"preload": []},
        providers={"vault": {"kind": "openai_compat", "base_url": "https://api.example/v1", "api_key": PASSPHRASE}},
    ).start()
    try:
        with d.client(timeout=10) as client:
            for name in (PASSPHRASE, ROTATED):
                with pytest.raises(NotFound):
                    client.embed(["hello"], model=name)
            d.config["providers"]["vault"]["api_key"] = ROTATED
            d.write_config()
            assert client.reload().applied
            with pytest.raises(NotFound):
                client.embed(["hello"], model=ROTATED)
    finally:
        assert d.stop() == 0
    logged = [r["model"] for r in d.records() if r.get("msg") == "request" and r.get("rpc") == "Embed"]
    assert logged == [MASK, ROTATED, MASK], d.log()
    assert PASSPHRASE not in d.log()
