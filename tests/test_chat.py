"""Chat through the daemon: one event stream shape, errors as statuses, cancel reaching the upstream."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ratatoskr_client import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceClient,
    Task,
    Unauthenticated,
    Unavailable,
)
from ratatoskr_client._proto.ratatoskr.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2
from ratatoskr_client.types import (
    ChatEvent,
    ChatOptions,
    ContentDelta,
    Done,
    Message,
    ReasoningDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    UsageEvent,
)
from ratatoskr_server.providers.scrub import REDACTED
from ratatoskr_server.redact import MASK
from tests.conftest import DaemonProcess, run_ratatoskr
from tests.upstreams import openai_double
from tests.upstreams.harness import Upstream, serve

KEY = "sk-live-chat-test-0123456789abcdefghij"
#: The "echo" provider's key, echoed back by its upstream; not key-shaped, so only configuration masks it.
ECHO_KEY = "echo-passphrase-for-the-daemon-0042"
ECHO = openai_double.ECHO_HEADER
HELLO = [Message("user", "Say hello")]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as up:
        yield up


@pytest.fixture(scope="module")
def chat_daemon(model_root: Path, upstream: Upstream) -> Iterator[DaemonProcess]:
    d = DaemonProcess(
        model_root,
        local={"preload": []},
        # These tests map one upstream answer each; retries (which would wait out retry-after: 3 twice)
        # are test_resilience's.
        resilience={"attempts": 1},
        providers={
            # Its upstream quotes the whole key in 401 bodies, so "KEY not in the message" can fail.
            "openai": {
                "kind": "openai_compat",
                "base_url": f"{upstream.base_url}/v1",
                "api_key": KEY,
                "headers": {ECHO: "error"},
            },
            # Its upstream echoes the key everywhere: errors, answers, model ids.
            "echo": {
                "kind": "openai_compat",
                "base_url": f"{upstream.base_url}/v1",
                "api_key": ECHO_KEY,
                "headers": {ECHO: "error,answer,models"},
            },
            "down": {"kind": "openai_compat", "base_url": "http://127.0.0.1:9/v1", "local": True},
        },
        aliases={"fast": "openai/gpt-test"},
    ).start()
    yield d
    d.stop()


def _options(model: str, **kw: object) -> ChatOptions:
    return ChatOptions(model=model, **kw)  # type: ignore[arg-type]


def test_stream_and_unary_through_the_daemon(chat_daemon: DaemonProcess) -> None:
    with chat_daemon.client(timeout=30) as client:
        events = list(client.chat_stream(HELLO, _options("openai/gpt-test")))
        unary = client.chat(HELLO, _options("fast"))  # the alias resolves to the same model
    assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == openai_double.assembled_text()
    usage = next(e.usage for e in events if isinstance(e, UsageEvent))
    assert usage.total_tokens == 19
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "stop"
    assert done.provider == "openai" and done.model == "gpt-test" and done.timing.total_ms > 0
    assert unary.message.content == openai_double.assembled_text() and unary.provider == "openai"
    assert unary.usage.prompt_tokens == 12 and unary.timing.total_ms > 0


def test_tool_calls_stream_through(chat_daemon: DaemonProcess) -> None:
    with chat_daemon.client(timeout=30) as client:
        events = list(client.chat_stream(HELLO, _options("openai/tools")))
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert [(s.index, s.id, s.name) for s in starts] == [(0, "call_a", "weather"), (1, "call_b", "time")]
    args = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta) and e.index == 0)
    assert json.loads(args) == openai_double.tool_arguments()
    assert [e.index for e in events if isinstance(e, ToolCallEnd)] == [0, 1]
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "tool_calls"


def test_generate_through_the_daemon(chat_daemon: DaemonProcess) -> None:
    with chat_daemon.client(timeout=30) as client:
        assert client.generate("Tell me", _options("openai/gpt-test")).text == "Once upon a time"
        streamed = list(client.generate_stream("Tell me", _options("openai/gpt-test")))
    assert "".join(e.text for e in streamed if isinstance(e, ContentDelta)) == "Once upon a time"


def test_errors_become_statuses_with_retry_after(chat_daemon: DaemonProcess) -> None:
    with chat_daemon.client(timeout=30) as client:
        with pytest.raises(ResourceExhausted) as limited:
            client.chat(HELLO, _options("openai/rate-limited"))
        assert limited.value.retry_after_s == 3.0 and limited.value.message.startswith("openai: ")
        with pytest.raises(ResourceExhausted):
            list(client.chat_stream(HELLO, _options("openai/rate-limited")))
        with pytest.raises(Unauthenticated) as auth:
            client.chat(HELLO, _options("openai/auth"))
        assert KEY not in auth.value.message
        with pytest.raises(Unavailable, match="down: cannot connect"):
            client.chat(HELLO, _options("down/anything"))
        with pytest.raises(NotFound, match="names no configured provider"):
            client.chat(HELLO, _options("nowhere/model"))
        with pytest.raises(FailedPrecondition, match="local ONNX model"):
            client.chat(HELLO, _options("local/all-minilm-l6-v2"))
        with pytest.raises(InvalidArgument, match="messages is empty"):
            client.chat([], _options("openai/gpt-test"))
        with pytest.raises(InvalidArgument, match="role 'robot'"):
            client.chat([Message("robot", "hi")], _options("openai/gpt-test"))
    assert KEY not in chat_daemon.log()


def test_a_key_echoed_in_an_error_is_masked(chat_daemon: DaemonProcess) -> None:
    """The provider error mapping masks configured secrets, also ones no key-shape rule would catch."""
    with chat_daemon.client(timeout=30) as client:
        with pytest.raises(Unauthenticated) as unary:
            client.chat(HELLO, _options("echo/auth"))
        with pytest.raises(Unauthenticated) as streamed:
            list(client.chat_stream(HELLO, _options("echo/auth")))
    for err in (unary.value, streamed.value):
        assert err.message == f"echo: Incorrect API key provided: {MASK}."  # echoed whole, masked whole
    assert ECHO_KEY not in chat_daemon.log()


def test_a_key_echoed_in_a_chat_answer_never_reaches_the_client(chat_daemon: DaemonProcess) -> None:
    with chat_daemon.client(timeout=30) as client:
        result = client.chat(HELLO, _options("echo/gpt-test"))
    assert ECHO_KEY not in repr(result)  # content, reasoning, model: every field
    assert result.message.content == f"{openai_double.assembled_text()} Your key is {REDACTED}."
    assert result.reasoning == f"thinking... Your key is {REDACTED}."


def test_a_key_echoed_across_stream_chunks_never_reaches_the_client(chat_daemon: DaemonProcess) -> None:
    """The upstream cuts the key between two chunks: no single delta holds it, the joined text would."""
    with chat_daemon.client(timeout=30) as client:
        events = list(client.chat_stream(HELLO, _options("echo/gpt-test")))
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert ECHO_KEY not in content and ECHO_KEY not in reasoning
    assert not any(ECHO_KEY in repr(e) for e in events)
    assert content == f"{openai_double.assembled_text()} Your key is {REDACTED}."
    assert reasoning == f"thinking... Your key is {REDACTED}."
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "stop"


def test_a_key_echoed_in_a_generated_text_never_reaches_the_client(chat_daemon: DaemonProcess) -> None:
    with chat_daemon.client(timeout=30) as client:
        result = client.generate("Tell me", _options("echo/gpt-test"))
        events = list(client.generate_stream("Tell me", _options("echo/gpt-test")))
    assert ECHO_KEY not in repr(result) and not any(ECHO_KEY in repr(e) for e in events)
    assert result.text == f"Once upon a time Your key is {REDACTED}."
    assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == result.text


def test_a_key_echoed_as_a_model_id_never_reaches_the_client(chat_daemon: DaemonProcess) -> None:
    with chat_daemon.client(timeout=30) as client:
        models = client.list_models()
    assert not any(ECHO_KEY in repr(m) for m in models)
    assert "echo/gpt-test" in {m.info.id for m in models}  # the provider was listed, only the key is gone


def test_midstream_failure_is_a_failed_status_not_a_clean_end(chat_daemon: DaemonProcess) -> None:
    with grpc.insecure_channel(f"unix:{chat_daemon.socket}") as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        for model in ("openai/midstream-error", "openai/cut"):
            request = gateway_pb2.ChatRequest(
                messages=[types_pb2.Message(role="user", content="hi")], options=types_pb2.ChatOptions(model=model)
            )
            received: list[types_pb2.ChatEvent] = []
            with pytest.raises(grpc.RpcError) as info:
                for event in stub.ChatStream(request, timeout=30):
                    received.append(event)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert any(e.WhichOneof("event") == "content" for e in received)  # it had started
            assert not any(e.WhichOneof("event") == "done" for e in received)


def test_client_cancel_and_deadline_close_the_upstream(chat_daemon: DaemonProcess, upstream: Upstream) -> None:
    upstream.disconnected.clear()
    with chat_daemon.client(timeout=30) as client:
        received: list[ChatEvent] = []
        for event in client.chat_stream(HELLO, _options("openai/slow")):
            received.append(event)
            if len(received) == 3:
                break  # the consumer walks away mid-stream
    assert upstream.disconnected.wait(5)

    upstream.disconnected.clear()
    started = time.monotonic()
    with chat_daemon.client() as client, pytest.raises(DeadlineExceeded):
        list(client.chat_stream(HELLO, _options("openai/slow"), timeout=0.5))
    assert time.monotonic() - started < 5
    assert upstream.disconnected.wait(5)


def test_slow_reader_holds_back_the_upstream(chat_daemon: DaemonProcess, upstream: Upstream) -> None:
    """No unbounded buffering: while the client reads nothing, the upstream cannot write much more."""
    with ServiceClient(chat_daemon.socket, timeout=120) as client:
        stream = client.chat_stream(HELLO, _options("openai/flood"))
        next(stream)
        time.sleep(2.0)  # the client reads nothing; a buffering relay would drain all 96 MiB meanwhile
        written_while_paused = upstream.state["flood_written"]
        # Kernel buffers and gRPC windows hold at most ~45 MiB (2,800 chunks); the rest must wait.
        assert written_while_paused < 0.6 * openai_double.FLOOD_CHUNKS, written_while_paused
        rest = list(stream)  # reading again lets it finish, nothing lost
    text = "".join(e.text for e in rest if isinstance(e, ContentDelta))
    assert len(text) + len(openai_double.FLOOD_PIECE) >= openai_double.FLOOD_CHUNKS * len(openai_double.FLOOD_PIECE)
    assert isinstance(rest[-1], Done)


def test_list_models_merges_local_and_provider_models(chat_daemon: DaemonProcess) -> None:
    with chat_daemon.client(timeout=30) as client:
        models = {m.info.id: m for m in client.list_models()}
        chat_only = {m.info.id for m in client.list_models(task=Task.CHAT)}
        local_only = {m.info.id for m in client.list_models(local_only=True)}
    minilm = models["local/all-minilm-l6-v2"]
    assert minilm.info.local and minilm.embedding_dimension == 384 and minilm.source == "local"
    assert Task.EMBED in minilm.info.tasks and Task.CLASSIFY in minilm.info.tasks
    assert models["local/tiny-nli"].labels == ["contradiction", "entailment", "neutral"]
    remote = models["openai/gpt-test"]
    assert remote.info.provider == "openai" and not remote.info.local and remote.source == "live"
    assert remote.info.aliases == ["fast"]
    assert "openai/gpt-test" in chat_only and "local/all-minilm-l6-v2" not in chat_only
    assert local_only == {"local/all-minilm-l6-v2", "local/tiny-nli"}  # "down" answers nothing, "openai" is remote


def test_cli_chat_backends_and_models(chat_daemon: DaemonProcess) -> None:
    sock = str(chat_daemon.socket)
    chat = run_ratatoskr("chat", "--socket", sock, "--model", "openai/gpt-test", "Say hello")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip() == openai_double.assembled_text()
    as_json = run_ratatoskr("chat", "--socket", sock, "--model", "openai/tools", "--json", "weather?")
    kinds = [json.loads(line)["type"] for line in as_json.stdout.splitlines()]
    assert kinds[0] == "ToolCallStart" and kinds[-1] == "Done"
    failed = run_ratatoskr("chat", "--socket", sock, "--model", "openai/auth", "hi")
    assert failed.returncode == 1 and failed.stderr.startswith("ratatoskr: UNAUTHENTICATED: openai:")
    assert KEY not in failed.stderr

    backends = run_ratatoskr("backends", "--json", "--config", str(chat_daemon.config_path), "--timeout", "3")
    rows = {r["name"]: r for r in json.loads(backends.stdout)}
    assert rows["openai"]["reachable"] is True and "gpt-test" in rows["openai"]["models"]
    assert rows["down"]["reachable"] is False and "cannot connect" in rows["down"]["detail"]
    assert backends.returncode == 1  # one configured backend does not answer

    listed = run_ratatoskr("models", "list", "--json", "--socket", sock, "--config", str(chat_daemon.config_path))
    names = {r["name"] for r in json.loads(listed.stdout)}
    assert {"all-minilm-l6-v2", "openai/gpt-test", "openai/tools"} <= names


def test_upstream_urls_stay_out_of_the_log(model_root: Path, upstream: Upstream) -> None:
    """httpx logs every request URL at INFO, query string (an Azure or HF key) included: silenced."""
    d = DaemonProcess(
        model_root,
        local={"preload": []},
        providers={
            "q": {
                "kind": "openai_compat",
                "base_url": f"{upstream.base_url}/v1",
                "query": {"api-version": "2024-10-21", "key": "query-secret-0123456789"},
            }
        },
    ).start()
    try:
        with d.client(timeout=30) as client:
            client.chat(HELLO, _options("q/gpt-test"))
        log = d.log()
    finally:
        d.stop()
    assert upstream.requests[-1].query["key"] == "query-secret-0123456789"  # it was sent
    assert "HTTP Request" not in log and "query-secret" not in log


def test_json_schema_integers_stay_integers(chat_daemon: DaemonProcess, upstream: Upstream) -> None:
    """Struct carries numbers as doubles: maxItems 3 must not reach the upstream as 3.0."""
    from ratatoskr_client.types import ResponseFormat, ToolDefinition

    schema = {"type": "object", "properties": {"tags": {"type": "array", "maxItems": 3, "items": {"type": "string"}}}}
    tool = ToolDefinition("tag", "tags a text", schema)
    fmt = ResponseFormat("json_schema", "answer", {"type": "object", "properties": {"n": {"minimum": 0.5}}})
    with chat_daemon.client(timeout=30) as client:
        client.chat(HELLO, _options("openai/gpt-test", tools=[tool], response_format=fmt))
    body = upstream.requests[-1].body
    sent = body["tools"][0]["function"]["parameters"]["properties"]["tags"]["maxItems"]
    assert sent == 3 and isinstance(sent, int)
    assert body["response_format"]["json_schema"]["schema"]["properties"]["n"]["minimum"] == 0.5


def test_unknown_enum_values_are_invalid_argument(chat_daemon: DaemonProcess) -> None:
    with grpc.insecure_channel(f"unix:{chat_daemon.socket}") as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        options = types_pb2.ChatOptions(model="openai/gpt-test", response_format=types_pb2.ResponseFormat(type=99))
        with pytest.raises(grpc.RpcError) as info:
            stub.Chat(gateway_pb2.ChatRequest(messages=[types_pb2.Message(role="user", content="hi")], options=options))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown response_format type 99" in (info.value.details() or "")
        with pytest.raises(grpc.RpcError) as info:
            stub.ListModels(gateway_pb2.ListModelsRequest(task=42), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown task 42" in (info.value.details() or "")


@pytest.mark.parametrize(
    ("messages", "options", "match"),
    [
        ([Message("user", "x")] * 2049, {}, "2049 messages exceed the limit of 2048"),
        ([Message("user", "x" * 4_000_001)], {}, "hold 4000001 characters; the limit is 4000000"),
        ([Message("user", "hi")], {"stop": ["s"] * 17}, "stop takes at most 16 strings"),
    ],
)
def test_chat_requests_are_bounded(
    chat_daemon: DaemonProcess, upstream: Upstream, messages: list[Message], options: dict[str, object], match: str
) -> None:
    sent = len(upstream.requests)
    with chat_daemon.client(timeout=30) as client, pytest.raises(InvalidArgument, match=match):
        client.chat(messages, _options("openai/gpt-test", **options))
    assert len(upstream.requests) == sent  # nothing was forwarded
