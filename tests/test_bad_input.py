"""Bad input gets the right status and a message a person can act on; the daemon keeps serving."""

from __future__ import annotations

import pytest

from ratatoskr_client import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    RatatoskrError,
    ResourceExhausted,
)
from tests.conftest import DaemonProcess


def _still_serving(daemon: DaemonProcess) -> None:
    with daemon.client(timeout=10) as client:
        assert client.health() == "SERVING"
        assert len(client.embed(["still here"]).vectors) == 1


def test_empty_input_list(daemon: DaemonProcess) -> None:
    with daemon.client(timeout=10) as client, pytest.raises(InvalidArgument, match="inputs is empty"):
        client.embed([])
    _still_serving(daemon)


def test_too_many_inputs(daemon: DaemonProcess) -> None:
    with daemon.client(timeout=10) as client, pytest.raises(InvalidArgument) as info:
        client.embed(["x"] * 65)
    assert "65 inputs" in info.value.message and "max_inputs_per_request" in info.value.message
    _still_serving(daemon)


def test_input_over_the_size_limit(daemon: DaemonProcess) -> None:
    with daemon.client(timeout=10) as client, pytest.raises(InvalidArgument) as info:
        client.embed(["fine", "y" * 5001])
    assert "input 1 is 5001 characters" in info.value.message
    _still_serving(daemon)


def test_message_over_the_grpc_size_limit(daemon: DaemonProcess) -> None:
    # server.max_receive_message_mb = 1 for this daemon.
    with daemon.client(timeout=10) as client, pytest.raises(ResourceExhausted):
        client.embed(["z" * 4000] * 60 * 5)
    _still_serving(daemon)


def test_overlong_input_without_truncation_names_index_and_tokens(daemon: DaemonProcess) -> None:
    long_text = "word " * 400
    with daemon.client(timeout=30) as client:
        cut = client.embed(["short", long_text])
        assert cut.tokens[1] == 256 and cut.truncated == [False, True]
        with pytest.raises(InvalidArgument) as info:
            client.embed(["short", long_text], truncate=False)
    assert "input 1 has 402 tokens" in info.value.message
    assert "at most 256" in info.value.message and "truncate" in info.value.message
    _still_serving(daemon)


def test_unknown_model(daemon: DaemonProcess) -> None:
    with daemon.client(timeout=10) as client, pytest.raises(NotFound) as info:
        client.embed(["x"], model="no-such-model")
    assert "unknown model 'no-such-model'" in info.value.message
    assert "all-minilm-l6-v2" in info.value.message  # says what is available
    _still_serving(daemon)


def test_deadline_too_short(daemon: DaemonProcess) -> None:
    """A deadline the daemon itself sees pass: long enough to arrive, too short for the work."""
    texts = [f"sentence {i} " + "with many more words in it " * 12 for i in range(64)]
    with daemon.client() as client:
        assert client.count_tokens(texts[:1]).total > 60  # each input is a few hundred tokens' work
        with pytest.raises(DeadlineExceeded):
            client.embed(texts, timeout=0.05)
    _still_serving(daemon)
    embeds = [r for r in daemon.records() if r.get("rpc") == "Embed" and r.get("status") != "OK"]
    assert embeds and embeds[-1]["status"] in ("DEADLINE_EXCEEDED", "CANCELLED"), embeds[-1:]


def test_errors_never_leak_tracebacks(daemon: DaemonProcess) -> None:
    with daemon.client(timeout=10) as client:
        for call in (lambda: client.embed([]), lambda: client.embed(["x"], model="nope")):
            with pytest.raises(RatatoskrError) as info:
                call()
            assert "Traceback" not in info.value.message


def test_echoed_values_are_cut(daemon: DaemonProcess) -> None:
    """A 300k-character model name comes back as NOT_FOUND with a short message, and a short log line."""
    name = "m" * 300_000
    with daemon.client(timeout=30) as client, pytest.raises(NotFound) as info:
        client.embed(["x"], model=name)
    assert len(info.value.message) < 2200 and "more characters)" in info.value.message
    record = [r for r in daemon.records() if r.get("rpc") == "Embed" and r.get("status") == "NOT_FOUND"][-1]
    assert len(record["model"]) < 300
    _still_serving(daemon)
