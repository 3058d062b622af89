"""The registry through a running daemon: GetModelMetadata, dropped-parameter metadata, `registry update`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ratatoskr_client._proto.ratatoskr.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2
from ratatoskr_client.client import DROPPED_PARAMETERS_KEY
from tests.conftest import DaemonProcess, run_ratatoskr
from tests.upstreams import openai_double, openrouter_double
from tests.upstreams.harness import Upstream, serve


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[Upstream, Upstream]]:
    with serve(openai_double.routes()) as chat, serve(openrouter_double.routes()) as catalogue:
        yield chat, catalogue


@pytest.fixture(scope="module")
def daemon_with_registry(model_root: Path, upstreams: tuple[Upstream, Upstream]) -> Iterator[DaemonProcess]:
    chat, catalogue = upstreams
    d = DaemonProcess(
        model_root,
        local={"preload": []},
        providers={"openrouter": {"kind": "openai_compat", "base_url": f"{chat.base_url}/v1"}},
        registry={"openrouter_url": f"{catalogue.base_url}/api/v1/models"},
    )
    d.config["registry"]["cache_file"] = str(d.dir / "registry.json")
    d.write_config()
    d.start()
    yield d
    d.stop()


def test_dropped_parameters_arrive_in_trailing_metadata(daemon_with_registry: DaemonProcess) -> None:
    with grpc.insecure_channel(f"unix:{daemon_with_registry.socket}") as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        request = gateway_pb2.ChatRequest(
            messages=[types_pb2.Message(role="user", content="hi")],
            options=types_pb2.ChatOptions(model="openrouter/openai/gpt-4o", top_k=40, temperature=0.5),
        )
        _, call = stub.Chat.with_call(request, timeout=30)
    trailing = dict(call.trailing_metadata() or ())
    assert trailing[DROPPED_PARAMETERS_KEY] == "top_k"
    assert any(r.get("msg") == "dropped unsupported parameters" for r in daemon_with_registry.records())


def test_registry_update_reaches_the_running_daemon(daemon_with_registry: DaemonProcess) -> None:
    model = "openrouter/anthropic/claude-3.5-sonnet"
    sock = str(daemon_with_registry.socket)
    before = json.loads(run_ratatoskr("models", "info", model, "--json", "--socket", sock).stdout)
    assert before["source"] == "embedded"  # the catalogue knows the family already

    update = run_ratatoskr(
        "registry", "update", "--json", "--config", str(daemon_with_registry.config_path), "--socket", sock
    )
    assert update.returncode == 0, update.stderr
    report = json.loads(update.stdout)
    assert report["daemon_reloaded"] is True
    assert {s["name"]: s["ok"] for s in report["sources"]} == {"openrouter": True}

    after = json.loads(run_ratatoskr("models", "info", model, "--json", "--socket", sock).stdout)
    assert after["source"] == "live"
    # "0.000003" USD per token is exactly 3 per million; "0.0000003" exactly 0.3.
    assert after["pricing"] == {"input_per_million": 3.0, "output_per_million": 15.0, "cached_input_per_million": 0.3}
    assert after["context_window"] == 200000 and after["max_output_tokens"] == 8192
    human = run_ratatoskr("models", "info", model, "--socket", sock)
    assert "temperature" in human.stdout and "price per million tokens: in $3" in human.stdout
