"""Latency the OpenAI-compatible HTTP front adds: the same chat requests straight to an upstream and
through the daemon's ``/v1/chat/completions``.

The upstream is bench/chat_overhead.py's (an aiohttp OpenAI double in its own process that answers
at once).  Figures, each p50/p99 over interleaved rounds of sequential calls with one keep-alive
``httpx.Client`` (so every figure pays the same client cost):
  direct unary / direct TTFT     POST the upstream itself (TTFT: to the first content delta);
  front unary / front TTFT       the same body to the daemon's HTTP front, model "up/bench";
  grpc unary                     the same chat through the daemon's gRPC socket (ServiceClient), for scale;
  floor aiohttp / floor uvicorn  a bare server answering a fixed JSON (uvicorn: httptools when installed,
                                 else h11): what the HTTP server alone costs, the measurement behind aiohttp
                                 (uvicorn figures only when uvicorn is installed).
Added latency = front p50 - direct p50.  Throughput with 32 concurrent clients, LiteLLM's proxy side by
side: bench/http_throughput.py.

Run: .venv/bin/python bench/http_front.py [--rounds 6 --requests 200]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ratatoskr_client import RatatoskrError, ServiceClient
from ratatoskr_client.types import ChatOptions, Message

HERE = Path(__file__).resolve().parent
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello in one short sentence."},
]
FIXED = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30},
    }
).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_floor_aiohttp(port: int) -> None:
    import uvloop
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=FIXED, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_floor_uvicorn(port: int) -> None:
    import uvicorn

    async def app(scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[dict[str, Any]], Any]) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(FIXED)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": FIXED})

    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="auto", log_level="warning", lifespan="off")


def wait_http(url: str, proc: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {proc.returncode}")
        try:
            httpx.post(url, json={"model": "x", "messages": MESSAGES}, timeout=2, trust_env=False)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within 60 s")


def start_daemon(
    socket_path: Path, upstream_url: str, http_port: int, settings: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """The lean daemon every HTTP-front bench measures; ``settings``: more RATATOSKR_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATATOSKR_")}
    env.update(
        RATATOSKR_SERVER__SOCKET_PATH=str(socket_path),
        RATATOSKR_METRICS__ENABLED="false",
        RATATOSKR_LOGGING__LEVEL="WARNING",
        RATATOSKR_LOCAL__PRELOAD="[]",
        RATATOSKR_LOCAL__AUTO_IMPORT_DEFAULT="false",
        RATATOSKR_PROVIDERS__UP__KIND="openai_compat",
        RATATOSKR_PROVIDERS__UP__BASE_URL=f"{upstream_url}/v1",
        RATATOSKR_PROVIDERS__UP__LOCAL="true",
        RATATOSKR_SERVER__TCP_REQUIRE_AUTH="false",  # loopback, no keys: the SDK-style placeholder is ignored
        RATATOSKR_HTTP_FRONT__ENABLED="true",
        RATATOSKR_HTTP_FRONT__PORT=str(http_port),
    )
    env.update(settings or {})
    proc = subprocess.Popen([sys.executable, "-m", "ratatoskr_server", "serve"], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with status {proc.returncode}")
        try:
            with ServiceClient(socket_path) as client:
                if client.health(timeout=1) == "SERVING":
                    return proc
        except RatatoskrError:
            time.sleep(0.1)
    raise SystemExit("the daemon did not become SERVING within 60 s")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def unary_probe(client: httpx.Client, url: str, model: str) -> Callable[[], None]:
    body = {"model": model, "messages": MESSAGES}

    def call() -> None:
        response = client.post(url, json=body)
        if response.status_code != 200:
            raise SystemExit(f"{url}: {response.status_code} {response.text[:200]}")
        response.json()

    return call


def ttft_probe(client: httpx.Client, url: str, model: str) -> Callable[[], None]:
    body = {"model": model, "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}

    def call() -> None:
        with client.stream("POST", url, json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data:") and line[5:].strip() != "[DONE]":
                    choices = json.loads(line[5:]).get("choices") or []
                    if choices and (choices[0].get("delta") or {}).get("content"):
                        return
        raise SystemExit(f"{url}: no content delta")

    return call


def grpc_chat(client: ServiceClient, messages: list[Message]) -> None:
    client.chat(messages, ChatOptions(model="up/bench"))


def timed(call: Callable[[], None], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-floor", choices=("aiohttp", "uvicorn"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_floor == "aiohttp":
        serve_floor_aiohttp(args.port)
        return 0
    if args.serve_floor == "uvicorn":
        serve_floor_uvicorn(args.port)
        return 0

    procs: list[subprocess.Popen[Any]] = []
    try:
        upstream = subprocess.Popen(
            [sys.executable, str(HERE / "chat_overhead.py"), "--serve-upstream"], stdout=subprocess.PIPE, text=True
        )
        procs.append(upstream)
        assert upstream.stdout is not None
        upstream_url = f"http://127.0.0.1:{upstream.stdout.readline().strip()}"
        sock = Path(tempfile.mkdtemp(prefix="rt-bench-", dir="/tmp")) / "r.sock"
        front_port = free_port()
        procs.append(start_daemon(sock, upstream_url, front_port))
        front_url = f"http://127.0.0.1:{front_port}"
        floors: dict[str, str] = {}
        for kind in ("aiohttp", "uvicorn"):
            if kind == "uvicorn":
                try:
                    import uvicorn  # noqa: F401
                except ImportError:
                    continue
            port = free_port()
            proc = subprocess.Popen([sys.executable, __file__, "--serve-floor", kind, "--port", str(port)])
            procs.append(proc)
            floors[kind] = f"http://127.0.0.1:{port}/v1/chat/completions"
            wait_http(floors[kind], proc)

        client = httpx.Client(timeout=30, trust_env=False)
        grpc_client = ServiceClient(sock, timeout=30)
        grpc_messages = [Message(m["role"], m["content"]) for m in MESSAGES]
        probes: dict[str, Callable[[], None]] = {
            "direct unary": unary_probe(client, f"{upstream_url}/v1/chat/completions", "bench"),
            "front unary": unary_probe(client, f"{front_url}/v1/chat/completions", "up/bench"),
            "grpc unary": lambda: grpc_chat(grpc_client, grpc_messages),
            "direct TTFT": ttft_probe(client, f"{upstream_url}/v1/chat/completions", "bench"),
            "front TTFT": ttft_probe(client, f"{front_url}/v1/chat/completions", "up/bench"),
            **{f"floor {kind}": unary_probe(client, url, "bench") for kind, url in floors.items()},
        }
        for call in probes.values():
            timed(call, args.warmup)
        measured: dict[str, list[float]] = {name: [] for name in probes}
        names = list(probes)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotating order shares drift
                measured[name] += timed(probes[name], args.requests)
        figures = {
            name: {
                "p50_ms": round(pct(v, 0.5), 3),
                "p99_ms": round(pct(v, 0.99), 3),
                "mean_ms": round(statistics.fmean(v) * 1000, 3),
            }
            for name, v in measured.items()
        }
        figures["added by the front"] = {
            "unary_p50_ms": round(figures["front unary"]["p50_ms"] - figures["direct unary"]["p50_ms"], 3),
            "unary_p99_ms": round(figures["front unary"]["p99_ms"] - figures["direct unary"]["p99_ms"], 3),
            "ttft_p50_ms": round(figures["front TTFT"]["p50_ms"] - figures["direct TTFT"]["p50_ms"], 3),
            "ttft_p99_ms": round(figures["front TTFT"]["p99_ms"] - figures["direct TTFT"]["p99_ms"], 3),
        }
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            print(f"{args.rounds} rounds x {args.requests} sequential calls per figure, one keep-alive httpx.Client")
            for name, fig in figures.items():
                print(f"  {name:20s} " + "  ".join(f"{k} {v:8.3f}" for k, v in fig.items()))
        client.close()
        grpc_client.close()
    finally:
        for proc in reversed(procs):
            stop(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
