"""The OpenAI-compatible HTTP front (issue 16), driven by the official ``openai`` SDK against a real
daemon whose provider is the OpenAI double: what the SDK assembles must be what the double sent."""

from __future__ import annotations

import base64
import json
import signal
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ratatoskr_client.types import ChatOptions, Done, Message, Notes, ToolCallStart, Truncation, Usage, UsageEvent
from ratatoskr_server.config import append_secret
from ratatoskr_server.fronts.openai_http import errors, wire
from ratatoskr_server.keys import new_token
from ratatoskr_server.providers.openai_compat import usage_from_openai
from tests.conftest import MODEL, DaemonProcess, short_dir
from tests.upstreams import openai_double
from tests.upstreams.harness import Upstream, serve


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as up:
        yield up


def http_address(daemon: DaemonProcess) -> str:
    for record in daemon.records():
        if record.get("msg") == "listening":
            return next(a for a in record["listen"] if a.startswith("http://"))
    raise AssertionError("no 'listening' line in the daemon log")


def _provider(upstream: Upstream) -> dict[str, object]:
    return {"up": {"kind": "openai_compat", "base_url": f"{upstream.base_url}/v1", "local": True}}


@pytest.fixture(scope="module")
def httpd(model_root: Path, upstream: Upstream) -> Iterator[DaemonProcess]:
    d = DaemonProcess(model_root, http_front={"enabled": True, "port": 0}, providers=_provider(upstream)).start()
    yield d
    d.stop()


@pytest.fixture
def sdk(httpd: DaemonProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{http_address(httpd)}/v1", api_key="unused", max_retries=0, timeout=30) as client:
        yield client


HI = [{"role": "user", "content": "hi"}]
TYPE_BY_STATUS = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


def test_chat_unary_is_the_doubles_answer(sdk: openai.OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(model="up/gpt-test", messages=HI, temperature=0.2)
    completion = raw.parse()
    assert completion.choices[0].message.content == openai_double.assembled_text()
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 19
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 4
    assert raw.headers["x-request-id"] and completion.id == f"chatcmpl-{raw.headers['x-request-id']}"


def test_chat_stream_assembles_to_the_doubles_text(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="up/gpt-test", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == openai_double.assembled_text()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 19


def test_a_streamed_answer_ends_with_the_notes_its_headers_could_not_carry(httpd: DaemonProcess) -> None:
    """The overhead is known only once the stream is over: it follows the last chunk as an SSE
    comment (which the SDK above skipped), just before ``[DONE]``; a failed stream carries it too."""
    body = json.dumps({"model": "up/gpt-test", "messages": HI, "stream": True}).encode()
    request = urllib.request.Request(
        f"{http_address(httpd)}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert "x-ratatoskr-overhead-ms" not in response.headers
        blocks = response.read().decode().split("\n\n")
    assert blocks[-2:] == ["data: [DONE]", ""]
    comments = blocks[-3].splitlines()
    assert all(line.startswith(": x-ratatoskr-") for line in comments), blocks[-3]
    overhead = [float(line.rsplit(": ", 1)[1]) for line in comments if line.startswith(": x-ratatoskr-overhead-ms: ")]
    assert len(overhead) == 1 and overhead[0] >= 0
    assert all(b.startswith("data: {") for b in blocks[:-3])

    failing = json.dumps({"model": "up/midstream-error", "messages": HI, "stream": True}).encode()
    request = urllib.request.Request(
        f"{http_address(httpd)}/v1/chat/completions", data=failing, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        blocks = response.read().decode().split("\n\n")
    assert blocks[-2].startswith('data: {"error"') and "data: [DONE]" not in blocks
    assert ": x-ratatoskr-overhead-ms: " in blocks[-3]


def test_streamed_tool_calls_assemble_in_the_sdk(sdk: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    with sdk.chat.completions.stream(model="up/tools", messages=HI, tools=tools) as stream:  # type: ignore[arg-type]
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["weather", "time"]  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == openai_double.tool_arguments()  # type: ignore[union-attr]
    assert json.loads(calls[1].function.arguments) == {"tz": "CET"}  # type: ignore[union-attr]
    assert final.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("model", "exception", "status"),
    [
        ("up/rate-limited", openai.RateLimitError, 429),
        ("up/bad-request", openai.BadRequestError, 400),
        ("up/server-error", openai.InternalServerError, 503),
        ("nowhere/model", openai.NotFoundError, 404),
    ],
)
def test_errors_are_the_sdks_classes(sdk: openai.OpenAI, model: str, exception: type[Exception], status: int) -> None:
    with pytest.raises(exception) as caught:
        sdk.chat.completions.create(model=model, messages=HI)
    err = caught.value
    assert isinstance(err, openai.APIStatusError) and err.status_code == status
    assert isinstance(err.body, dict) and err.body["type"] == TYPE_BY_STATUS[status]
    if status == 429:
        assert int(err.response.headers["retry-after"]) >= 1


def test_streams_refused_before_the_first_event_get_their_status(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="up/rate-limited", messages=HI, stream=True)


def test_a_midstream_error_is_an_sdk_error_never_a_clean_end(sdk: openai.OpenAI) -> None:
    received: list[str] = []
    with pytest.raises(openai.APIError, match="crashed"):
        for chunk in sdk.chat.completions.create(model="up/midstream-error", messages=HI, stream=True):
            received.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(received) == "".join(openai_double.TEXT_PIECES[:2])


def test_a_deadline_that_passes_mid_stream_is_an_in_band_timeout(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="up/slow", messages=HI, stream=True, extra_headers={"x-ratatoskr-timeout": "0.5"}
    )
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "timeout"
    with pytest.raises(openai.BadRequestError, match="x-ratatoskr-timeout"):
        sdk.chat.completions.create(model="up/gpt-test", messages=HI, extra_headers={"x-ratatoskr-timeout": "soon"})


def test_a_client_leaving_mid_stream_closes_the_upstream_call_quietly(
    sdk: openai.OpenAI, httpd: DaemonProcess, upstream: Upstream
) -> None:
    upstream.disconnected.clear()
    stream = sdk.chat.completions.create(model="up/slow", messages=HI, stream=True)
    for _, _chunk in zip(range(3), stream, strict=False):
        pass
    stream.close()
    assert upstream.disconnected.wait(10), "the upstream call outlived its client"
    time.sleep(0.2)
    assert not [r for r in httpd.records() if r.get("level") == "error"], httpd.log()
    cancelled = [r for r in httpd.records() if r.get("rpc") == "ChatStream" and r.get("status") == "CANCELLED"]
    assert cancelled, httpd.log()


def test_completions_unary_and_streamed(sdk: openai.OpenAI) -> None:
    unary = sdk.completions.create(model="up/gpt-test", prompt="Tell me")
    assert unary.choices[0].text == "Once upon a time" and unary.choices[0].finish_reason == "length"
    streamed = list(sdk.completions.create(model="up/gpt-test", prompt="Tell me", stream=True))
    assert "".join(c.choices[0].text for c in streamed) == "Once upon a time"


def _sent_upstream(upstream: Upstream, path: str, marker: str) -> list[dict[str, Any]]:
    """The JSON bodies the double received at ``path`` whose text holds ``marker``, in arrival order."""
    return [r.body for r in upstream.requests if r.path == path and marker in json.dumps(r.body)]


def test_a_batch_of_prompts_is_one_choice_per_prompt_by_index(sdk: openai.OpenAI, upstream: Upstream) -> None:
    batch = f"batch {uuid.uuid4().hex}"
    prompts = [f"{batch} #{i}" for i in range(5)]
    answer = sdk.completions.create(model="up/echo-prompt", prompt=prompts, max_tokens=9)
    assert [c.index for c in answer.choices] == list(range(5))
    assert [c.text for c in answer.choices] == [f"you said: {p}" for p in prompts]
    assert answer.usage is not None and answer.usage.total_tokens == 5 * 19 and answer.usage.prompt_tokens == 5 * 12
    sent = _sent_upstream(upstream, "/v1/completions", batch)
    assert sorted(b["prompt"] for b in sent) == sorted(prompts) and {b["max_tokens"] for b in sent} == {9}

    streamed = list(sdk.completions.create(model="up/echo-prompt", prompt=prompts[:3], stream=True))
    texts: dict[int, str] = {}
    finished: list[int] = []
    for chunk in streamed:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finished.append(choice.index)
    assert texts == {i: f"you said: {p}" for i, p in enumerate(prompts[:3])} and finished == [0, 1, 2]

    with pytest.raises(openai.BadRequestError, match="token arrays"):
        sdk.completions.create(model="up/echo-prompt", prompt=[[1, 2, 3]])
    with pytest.raises(openai.BadRequestError):  # one refused prompt fails the batch with its own kind
        sdk.completions.create(model="up/echo-prompt", prompt=["a", "fail:bad-request", "b"])


def test_response_format_and_stop_reach_the_upstream_as_sent(sdk: openai.OpenAI, upstream: Upstream) -> None:
    marker = f"passthrough {uuid.uuid4().hex}"
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": True}}
    messages = [{"role": "user", "content": marker}]
    sdk.chat.completions.create(
        model="up/gpt-test",
        messages=messages,  # type: ignore[arg-type]
        response_format=response_format,  # type: ignore[arg-type]
        stop=["END", "\n\n"],
    )
    list(
        sdk.chat.completions.create(
            model="up/gpt-test",
            messages=messages,  # type: ignore[arg-type]
            response_format={"type": "json_object"},
            stop="STOP",
            stream=True,
        )
    )
    sdk.completions.create(model="up/gpt-test", prompt=marker, stop=["###"])
    unary, streamed = _sent_upstream(upstream, "/v1/chat/completions", marker)
    assert unary["response_format"] == response_format and unary["stop"] == ["END", "\n\n"]
    assert streamed["response_format"] == {"type": "json_object"} and streamed["stop"] in ("STOP", ["STOP"])
    assert streamed["stream"] is True
    (completion,) = _sent_upstream(upstream, "/v1/completions", marker)
    assert completion["stop"] in ("###", ["###"])


def test_a_body_over_max_body_mb_is_413_in_openais_shape(httpd: DaemonProcess) -> None:
    oversized = json.dumps({"model": "up/gpt-test", "prompt": "x" * (17 * 1024 * 1024)}).encode()
    request = urllib.request.Request(
        f"{http_address(httpd)}/v1/completions",
        data=oversized,
        method="POST",
        headers={"content-type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413
    error = json.loads(refused.value.read())["error"]
    assert error["code"] == "request_too_large" and "http_front.max_body_mb" in error["message"]


def test_http_calls_count_under_the_http_transport(sdk: openai.OpenAI, httpd: DaemonProcess) -> None:
    def requests(transport: str) -> float:
        body = urllib.request.urlopen(httpd.metrics_url(), timeout=10).read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(body)
            for sample in family.samples
            if sample.name == "ratatoskr_requests_total"
            and sample.labels == {"rpc": "Chat", "code": "OK", "transport": transport}
        )

    http_before, grpc_before = requests("http"), requests("grpc")
    sdk.chat.completions.create(model="up/gpt-test", messages=HI)
    sdk.chat.completions.create(model="up/gpt-test", messages=HI)
    with httpd.client(timeout=10) as client:
        client.chat([Message(role="user", content="hi")], ChatOptions(model="up/gpt-test"))
    assert requests("http") - http_before == 2 and requests("grpc") - grpc_before == 1


def test_local_embeddings_float_and_base64_are_the_same_vectors(sdk: openai.OpenAI) -> None:
    texts = ["the cat sat", "a dog ran"]
    floats = sdk.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    encoded = sdk.embeddings.create(model=MODEL, input=texts, encoding_format="base64")
    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 384
    for a, b in zip(floats.data, encoded.data, strict=True):
        raw = base64.b64decode(str(b.embedding))  # little-endian float32, as OpenAI sends it
        decoded = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        assert decoded == pytest.approx(a.embedding, abs=1e-6)
    single = sdk.embeddings.create(model=MODEL, input="the cat sat")
    assert single.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    with pytest.raises(openai.BadRequestError, match="384"):
        sdk.embeddings.create(model=MODEL, input="x", dimensions=64)
    assert len(sdk.embeddings.create(model=MODEL, input="x", dimensions=384).data[0].embedding) == 384


def test_models_list_and_get_local_and_remote(sdk: openai.OpenAI) -> None:
    ids = [m.id for m in sdk.models.list()]
    assert f"local/{MODEL}" in ids or MODEL in ids
    local_id = f"local/{MODEL}" if f"local/{MODEL}" in ids else MODEL
    model = sdk.models.retrieve(local_id)
    assert model.id == local_id and model.object == "model"
    extra = model.model_extra or {}
    assert extra["ratatoskr"]["embedding_dimension"] == 384 and extra["ratatoskr"]["info"]["local"] is True
    remote = sdk.models.retrieve("up/gpt-test")
    assert remote.id == "up/gpt-test" and remote.owned_by == "up"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("nowhere/model")


def test_bad_requests_are_400_with_the_field_named(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="n: only 1"):
        sdk.chat.completions.create(model="up/gpt-test", messages=HI, n=2)
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]
    with pytest.raises(openai.BadRequestError, match="only text parts"):
        sdk.chat.completions.create(model="up/gpt-test", messages=image)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        sdk.get("/nothing-here", cast_to=object)


def test_the_litellm_sdk_is_a_client_for_chat_and_embeddings(
    httpd: DaemonProcess, sdk: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LiteLLM's own OpenAI route (``openai/<model>`` with ``api_base``), as its users would point it
    at us; imported here only, as it takes seconds to import."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # its price list from the wheel, not the network
    import litellm

    base = f"{http_address(httpd)}/v1"
    answer = litellm.completion(
        model="openai/up/gpt-test", api_base=base, api_key="unused", messages=HI, max_retries=0, timeout=30
    )
    assert answer.choices[0].message.content == openai_double.assembled_text()
    assert answer.usage.total_tokens == 19
    pieces = litellm.completion(
        model="openai/up/gpt-test", api_base=base, api_key="unused", messages=HI, stream=True, timeout=30
    )
    assert "".join(c.choices[0].delta.content or "" for c in pieces) == openai_double.assembled_text()
    texts = ["the cat sat", "a dog ran"]
    vectors = litellm.embedding(model=f"openai/{MODEL}", api_base=base, api_key="unused", input=texts, timeout=30)
    expected = sdk.embeddings.create(model=MODEL, input=texts)
    assert [d["index"] for d in vectors.data] == [0, 1]
    for got, want in zip(vectors.data, expected.data, strict=True):
        assert got["embedding"] == pytest.approx(want.embedding, abs=1e-6)
    with pytest.raises(litellm.RateLimitError):
        litellm.completion(
            model="openai/up/rate-limited", api_base=base, api_key="unused", messages=HI, max_retries=0, timeout=30
        )


def test_keys_are_checked_when_configured(model_root: Path, upstream: Upstream) -> None:
    directory = short_dir()
    secrets = directory / "secrets.toml"
    token, stored = new_token()
    append_secret(secrets, "KEY_APP", str(stored))
    embed_token, embed_stored = new_token()
    append_secret(secrets, "KEY_EMB", str(embed_stored))
    d = DaemonProcess(
        model_root,
        secrets_file=secrets,
        server={"tcp_require_auth": True},
        http_front={"enabled": True, "port": 0},
        callers={
            "app": {"key_hash": "${KEY_APP}", "scopes": ["chat"]},
            "emb": {"key_hash": "${KEY_EMB}", "scopes": ["embed"]},
        },
        providers=_provider(upstream),
    ).start()
    try:
        base = f"{http_address(d)}/v1"
        # No key at all (the SDK cannot be made to send none): a plain request.
        request = urllib.request.Request(
            f"{base}/chat/completions",
            data=json.dumps({"model": "up/gpt-test", "messages": HI}).encode(),
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 401
        error = json.loads(refused.value.read())["error"]
        assert error["type"] == "authentication_error"
        # Worded for an HTTP caller: the header to send, not gRPC metadata.
        assert "Authorization: Bearer" in error["message"] and "metadata" not in error["message"]
        wrong = openai.OpenAI(base_url=base, api_key="rtk_not_a_key", max_retries=0)
        with wrong, pytest.raises(openai.AuthenticationError) as caught:
            wrong.chat.completions.create(model="up/gpt-test", messages=HI)
        assert caught.value.status_code == 401 and "not valid" in caught.value.message
        with openai.OpenAI(base_url=base, api_key=token, max_retries=0) as client:
            answer = client.chat.completions.create(model="up/gpt-test", messages=HI)
            assert answer.choices[0].message.content == openai_double.assembled_text()
        embedder = openai.OpenAI(base_url=base, api_key=embed_token, max_retries=0)
        with embedder, pytest.raises(openai.PermissionDeniedError, match="'chat' scope"):
            embedder.chat.completions.create(model="up/gpt-test", messages=HI)
    finally:
        d.stop()
    assert token not in d.log() and embed_token not in d.log()


# -- the wire, without a daemon ------------------------------------------------------------------


def test_usage_json_is_what_the_upstream_adapter_reads_back() -> None:
    usage = Usage(prompt_tokens=12, completion_tokens=7, total_tokens=19, cached_tokens=4, reasoning_tokens=2)
    assert usage_from_openai(wire.usage_to_json(usage)) == usage


def test_chunks_put_the_finish_then_the_usage_chunk_last() -> None:
    chunks = wire.ChatChunks("r1", "m", include_usage=True)
    truncation = Truncation("sliding_window", [1], 10, 5, 8, 3)
    out = [
        *chunks.chunks(ToolCallStart(0, "call_a", "weather")),
        *chunks.chunks(UsageEvent(Usage(1, 2, 3))),
        *chunks.chunks(Done("tool_calls", notes=Notes(truncation=truncation))),
    ]
    assert out[0]["choices"][0]["delta"]["tool_calls"][0] == {
        "index": 0,
        "id": "call_a",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    assert out[1]["choices"][0]["finish_reason"] == "tool_calls" and out[1]["ratatoskr"]["notes"]["truncation"]
    assert out[2]["choices"] == [] and out[2]["usage"]["total_tokens"] == 3


def test_every_error_kind_has_an_http_status() -> None:
    from ratatoskr_client.errors import ERROR_BY_CODE

    assert set(ERROR_BY_CODE) <= set(errors.HTTP_BY_CODE)
    assert {e.status for e in errors.HTTP_BY_CODE.values()} >= {400, 401, 403, 404, 408, 422, 429, 500, 503}


def test_sigterm_lets_an_in_flight_http_call_finish_then_closes_the_port(model_root: Path) -> None:
    d = DaemonProcess(model_root, http_front={"enabled": True, "port": 0}).start()
    base = f"{http_address(d)}/v1"
    texts = [f"sentence number {i} of a batch large enough to take a while" for i in range(1500)]
    outcome: dict[str, object] = {}

    def call() -> None:
        with openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=60) as client:
            try:
                outcome["result"] = client.embeddings.create(model=MODEL, input=texts)
            except BaseException as err:
                outcome["result"] = err

    worker = threading.Thread(target=call)
    worker.start()
    deadline = time.monotonic() + 30
    with d.client(timeout=5) as grpc_client:
        while grpc_client.status().in_flight < 1:
            assert time.monotonic() < deadline, "the HTTP call never showed up as in flight"
            time.sleep(0.005)
    d.signal(signal.SIGTERM)
    worker.join(timeout=60)
    assert d.proc is not None
    # Waited for, not stopped: a second SIGTERM could land in the moment the daemon swaps its handlers.
    assert d.proc.wait(timeout=60) == 0, d.log()
    result = outcome.get("result")
    assert isinstance(result, openai.types.CreateEmbeddingResponse), f"{result!r}\n{d.log()}"
    assert len(result.data) == len(texts)
    draining = [r for r in d.records() if r.get("msg") == "draining"]
    assert draining and draining[0].get("in_flight") == 1, d.log()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{base}/models", timeout=5)
