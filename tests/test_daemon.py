"""The daemon over a real Unix socket and TCP: health, reflection, permissions, metrics, logs."""

from __future__ import annotations

import stat
import urllib.request
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from ratatoskr_client import AsyncServiceClient, InvalidArgument, NotFound, ServiceClient, Task
from ratatoskr_client._proto.ratatoskr.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc, types_pb2
from tests.conftest import MODEL, TINY_NLI, TINY_NLI_LABELS, DaemonProcess


def test_health_serving_and_socket_permissions(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        assert client.health() == "SERVING"
        assert client.health("ratatoskr.v1.Gateway") == "SERVING"
    assert stat.S_ISSOCK(daemon.socket.stat().st_mode)
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(daemon.socket.parent.stat().st_mode) == 0o700


def test_reflection_lists_both_services(daemon: DaemonProcess) -> None:
    with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in answer.list_services_response.service}
    assert {"ratatoskr.v1.Gateway", "ratatoskr.v1.Admin", "grpc.health.v1.Health"} <= names


def test_tcp_and_socket_give_the_same_vectors(daemon: DaemonProcess) -> None:
    texts = ["a quick test over two transports", "second input"]
    with daemon.client() as via_socket, ServiceClient(daemon.tcp_address()) as via_tcp:
        a = via_socket.embed(texts)
        b = via_tcp.embed(texts)
    # Same model either way; the batcher may cut the two inputs into one batch or two, and a
    # padded row differs from an unpadded one in its last bits, so compare to float32's precision.
    assert np.allclose(a.vectors, b.vectors, rtol=0, atol=1e-6)
    assert a.dimension == 384 and a.normalized and a.model == MODEL
    assert a.tokens == [8, 4]
    assert a.timing.total_ms > 0 and a.timing.inference_ms > 0 and a.timing.input_tokens == 12


async def test_async_client_over_tcp(daemon: DaemonProcess) -> None:
    async with AsyncServiceClient(daemon.tcp_address(), timeout=10) as client:
        result = await client.embed(["asyncio works too"])
        status = await client.status()
    assert len(result.vectors[0]) == 384
    assert status.state == "serving"
    assert MODEL in [m.name for m in status.models]
    assert status.models[0].device == "CPUExecutionProvider"


def test_unbuilt_rpcs_say_what_is_missing(daemon: DaemonProcess) -> None:
    with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
        gateway = gateway_pb2_grpc.GatewayStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            gateway.RenderChatTemplate(gateway_pb2.RenderChatTemplateRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # built now: it asks for the model
        assert "no model given" in info.value.details()
        admin = admin_pb2_grpc.AdminStub(channel)
        assert list(admin.GetBudget(admin_pb2.GetBudgetRequest(), timeout=5).scopes) == []  # built: none configured
        with pytest.raises(grpc.RpcError) as info:
            admin.GetBudget(admin_pb2.GetBudgetRequest(scope="global"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no budget is configured" in info.value.details()


def test_admin_models(daemon: DaemonProcess) -> None:
    with daemon.client(timeout=30) as client:
        (loaded,) = [m for m in client.list_loaded_models() if m.name == MODEL]
    with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
        listing = admin_pb2_grpc.AdminStub(channel).ListLoadedModels(admin_pb2.ListLoadedModelsRequest(), timeout=5)
    # file_mb is rounded to 0.1 MB, memory_used_mb is not.
    assert listing.memory_budget_mb == 4096 and listing.memory_used_mb >= loaded.file_mb - 0.05
    with daemon.client(timeout=30) as client:
        assert loaded.name == MODEL and loaded.state == "ready"
        assert loaded.file_mb > 80 and loaded.memory_mb > 0
        with pytest.raises(NotFound):
            client.load_model("no-such-model")
        tiny = client.load_model(TINY_NLI)
        assert tiny.state == "ready" and tiny.task is Task.NLI and tiny.device == "CPUExecutionProvider"
        assert client.unload_model(TINY_NLI) is True
        assert TINY_NLI not in [m.name for m in client.list_loaded_models()]
        assert client.unload_model(TINY_NLI) is False  # not loaded any more: nothing to do


def _metric_values(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample the metrics endpoint shows now, by name and labels."""
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def _embed_lines(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [r for r in daemon.records() if r.get("msg") == "request" and r.get("rpc") == "Embed"]


def test_metrics_and_one_log_line_per_request(daemon: DaemonProcess) -> None:
    """Counted from before to after this test's own calls: the shared daemon has served others already."""
    before, lines_before = _metric_values(daemon.metrics_url()), len(_embed_lines(daemon))
    with daemon.client(timeout=10) as client:
        first = client.embed(["count me"])
        second = client.embed(["and me", "and me too"])
    after = _metric_values(daemon.metrics_url())

    def grew(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("ratatoskr_requests_total", code="OK", rpc="Embed", transport="grpc") == 2
    assert grew("ratatoskr_request_duration_seconds_count", rpc="Embed", transport="grpc") == 2
    assert grew("ratatoskr_request_duration_seconds_bucket", le="+Inf", rpc="Embed", transport="grpc") == 2
    assert grew("ratatoskr_embedded_inputs_total", model=MODEL) == 3
    assert grew("ratatoskr_input_tokens_total", model=MODEL) == sum(first.tokens) + sum(second.tokens) > 0
    lines = _embed_lines(daemon)[lines_before:]
    assert len(lines) == 2, daemon.log()
    for line in lines:
        assert {"request_id", "rpc", "model", "status", "duration_ms"} <= set(line)
        assert line["status"] == "OK" and line["model"] == MODEL and len(line["request_id"]) >= 16
    assert lines[0]["request_id"] != lines[1]["request_id"]


def test_local_model_calls_over_the_wire(daemon: DaemonProcess) -> None:
    with daemon.client(timeout=30) as client:
        ranked = client.classify("The striker scored twice in the final", ["cooking", "finance", "sports"])
        assert ranked.strategy == "embedding" and ranked.scores[0].label == "sports"
        nli = client.nli([("A man plays guitar.", "Someone makes music.")], model=TINY_NLI)
        (prediction,) = nli.predictions
        assert [s.label for s in prediction.scores] == TINY_NLI_LABELS
        assert sum(s.score for s in prediction.scores) == pytest.approx(1.0, abs=1e-5)
        assert nli.timing.total_ms > 0
        tokens = client.tokenize("Hello, world!")
        assert [t.text for t in tokens.tokens] == ["[CLS]", "hello", ",", "world", "!", "[SEP]"]
        assert client.count_tokens(["Hello, world!", "x"]).counts == [6, 3]
        with pytest.raises(InvalidArgument, match="default_nli_model"):
            client.nli([("a", "b")])
        with pytest.raises(NotFound):
            client.classify("text", ["a"], model="nope")


def test_count_tokens_of_messages_counts_the_rendered_prompt(daemon: DaemonProcess) -> None:
    """Messages are counted through the model's chat template; without a tokenizer the count says it is
    an estimate."""
    messages = [types_pb2.Message(role="user", content="hi")]
    with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
        gateway = gateway_pb2_grpc.GatewayStub(channel)
        counted = gateway.CountTokens(
            gateway_pb2.CountTokensRequest(model="ollama/llama-2-7b-chat", messages=messages), timeout=10
        )
        # "<s>[INST] hi [/INST]": 20 characters, about 5 tokens, and said to be an estimate
        assert counted.estimated and list(counted.counts) == [5] and counted.total == 5
        # No template known (a paid API renders its own): the messages' estimate, flagged, not a refusal.
        # "hi" is 1 token by the four-characters rule, plus 4 for its role and delimiters, plus 3 priming.
        remote = gateway.CountTokens(gateway_pb2.CountTokensRequest(model="gpt-4o", messages=messages), timeout=10)
        assert remote.estimated and list(remote.counts) == [8]
        with pytest.raises(grpc.RpcError) as info:
            gateway.CountTokens(gateway_pb2.CountTokensRequest(messages=messages), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no model given" in (info.value.details() or "")
