"""One pipeline for every way in: the daemon and the embedded gateway meet the same edge and stages.

Each check runs the same calls both ways (a real daemon over its Unix socket, and the in-process
gateway ``auto()`` builds) and compares what a caller sees: limits, notes, errors, the log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ratatoskr_client import AsyncServiceClient, InvalidArgument, ResourceExhausted
from ratatoskr_client._proto.ratatoskr.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2
from ratatoskr_client.client import DROPPED_PARAMETERS_KEY, REQUEST_ID_KEY
from ratatoskr_client.errors import Internal
from ratatoskr_client.protocol import ModelGateway
from ratatoskr_client.types import ChatOptions, ContentDelta, Done, Message
from ratatoskr_server.config import load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from tests.conftest import MODEL, DaemonProcess
from tests.upstreams import openai_double
from tests.upstreams.harness import Upstream, serve

HELLO = [Message(role="user", content="hello")]


def _overrides(model_root: Path, upstream: Upstream) -> dict[str, Any]:
    return {
        "server": {"max_in_flight": 1},
        "limits": {"max_inputs_per_request": 3},
        "local": {"model_dir": model_root, "auto_import_default": False, "preload": []},
        "providers": {"openai": {"kind": "openai_compat", "base_url": f"{upstream.base_url}/v1"}},
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as up:
        yield up


@pytest.fixture(scope="module")
def daemon(model_root: Path, upstream: Upstream) -> Iterator[DaemonProcess]:
    d = DaemonProcess(model_root, **_overrides(model_root, upstream))
    d.config["local"]["preload"] = [MODEL]
    d.write_config()
    d.start()
    yield d
    d.stop()


@pytest.fixture
async def both(daemon: DaemonProcess, model_root: Path, upstream: Upstream) -> AsyncIterator[dict[str, ModelGateway]]:
    embedded = EmbeddedGateway(load_settings(**_overrides(model_root, upstream)))
    client = AsyncServiceClient(daemon.socket, timeout=60)
    yield {"daemon": client, "embedded": embedded}
    await client.close()
    await embedded.close()


async def test_same_notes_both_ways(both: dict[str, ModelGateway]) -> None:
    """gpt-4o takes no top_k: both ways drop it and say so in the result (and the stream's Done)."""
    for way, gw in both.items():
        options = ChatOptions(model="openai/gpt-4o", top_k=40, temperature=0.5)
        result = await gw.chat(HELLO, options)
        assert result.notes.dropped_parameters == ["top_k"], way
        events = [e async for e in gw.chat_stream(HELLO, options)]
        done = events[-1]
        assert isinstance(done, Done) and done.notes.dropped_parameters == ["top_k"], way
        plain = await gw.chat(HELLO, ChatOptions(model="openai/gpt-4o"))
        assert not plain.notes, way


async def test_same_limits_both_ways(both: dict[str, ModelGateway]) -> None:
    messages: dict[str, str] = {}
    for way, gw in both.items():
        with pytest.raises(InvalidArgument) as info:
            await gw.embed(["a", "b", "c", "d"])
        messages[way] = info.value.message
    assert messages["daemon"] == messages["embedded"]
    assert "limits.max_inputs_per_request" in messages["daemon"]


async def test_same_in_flight_limit_both_ways(both: dict[str, ModelGateway]) -> None:
    """With server.max_in_flight = 1, a held stream makes the next call RESOURCE_EXHAUSTED, both ways."""
    for way, gw in both.items():
        stream = gw.chat_stream(HELLO, ChatOptions(model="openai/stall"))
        first = await anext(aiter(stream))
        assert isinstance(first, ContentDelta), way
        try:
            with pytest.raises(ResourceExhausted, match=r"server\.max_in_flight") as info:
                await gw.embed(["one more"])
            assert info.value.retry_after_s == 1, way
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)  # the daemon sees the cancel a moment later
        assert len((await gw.embed(["room again"])).vectors) == 1, way


async def test_same_log_line_both_ways(
    both: dict[str, ModelGateway], daemon: DaemonProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ratatoskr.request")
    for gw in both.values():
        await gw.chat(HELLO, ChatOptions(model="openai/gpt-4o", top_k=40))
    fields = ("rpc", "model", "status", "dropped_parameters")
    daemon_line = [r for r in daemon.records() if r.get("msg") == "request" and r.get("rpc") == "Chat"][-1]
    embedded_line = [r for r in caplog.records if r.name == "ratatoskr.request" and r.__dict__.get("rpc") == "Chat"][-1]
    assert {f: daemon_line[f] for f in fields} == {f: embedded_line.__dict__[f] for f in fields}
    assert daemon_line["dropped_parameters"] == "top_k"
    for line in (daemon_line, embedded_line.__dict__):
        assert line["request_id"] and isinstance(line["duration_ms"], float)


def test_notes_also_travel_in_trailing_metadata(daemon: DaemonProcess) -> None:
    with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        request = gateway_pb2.ChatRequest(
            messages=[types_pb2.Message(role="user", content="hi")],
            options=types_pb2.ChatOptions(model="openai/gpt-4o", top_k=40),
        )
        response, call = stub.Chat.with_call(request, timeout=30, metadata=[(REQUEST_ID_KEY, "req-abc")])
    trailing = dict(call.trailing_metadata() or ())
    assert trailing[DROPPED_PARAMETERS_KEY] == "top_k"
    assert trailing[REQUEST_ID_KEY] == "req-abc"  # the caller's id is kept
    assert list(response.notes.dropped_parameters) == ["top_k"]


async def test_an_unexpected_failure_is_internal_with_the_request_id(
    model_root: Path, upstream: Upstream, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug below the edge reaches the caller as INTERNAL naming the request id, never its text."""
    gw = EmbeddedGateway(load_settings(**_overrides(model_root, upstream)))

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom at /srv/secret/path")

    monkeypatch.setattr(gw.gateway.local, "embed", broken)
    caplog.set_level(logging.INFO, logger="ratatoskr.request")
    try:
        with pytest.raises(Internal) as info:
            await gw.embed(["x"])
    finally:
        await gw.close()
    assert "boom" not in info.value.message and "Traceback" not in info.value.message
    line = [r for r in caplog.records if r.name == "ratatoskr.request" and r.getMessage() == "request"][-1]
    assert line.__dict__["status"] == "INTERNAL"
    assert line.__dict__["request_id"] in info.value.message
    logged = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert logged and logged[-1].exc_info is not None  # the traceback is in the log, for the operator
