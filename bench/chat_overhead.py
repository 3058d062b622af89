"""Chat latency the daemon adds: the same requests sent straight to an upstream and through the daemon.

One loopback OpenAI-compatible upstream (an aiohttp app in its own process that
answers at once: a unary JSON completion, or an SSE stream of a few
``data: {chunk}`` events and ``data: [DONE]``) is called
  (1) directly with httpx: unary POST /v1/chat/completions, and streaming, timed
      to the first content delta (time to first token, TTFT);
  (2) through the daemon, configured with that upstream as provider "up" (model
      "up/bench"): ``chat()``, and ``chat_stream()`` timed to the first ContentDelta;
  (3) a bare grpc.aio echo service (a generic handler: bytes in, the same bytes out;
      uvloop, its own process, a Unix socket, like the daemon): the floor of any gRPC
      hop on this machine.  The daemon's own Health.Check is shown beside it.
Every figure uses the same client style: blocking clients by default (httpx.Client,
ServiceClient, a grpc channel), which cost the least here; --client async switches
all of them to their asyncio forms on uvloop.  Calls go one at a time, in
interleaved rounds (each round runs every figure for --requests calls, in a
rotating order), so a noisy machine's drift is shared by all figures.

It prints p50/p99 per figure with the CPU time per call of the serving process
and of the client, the latency the daemon adds (daemon p50 - direct p50) for
unary calls and for TTFT, the ratio added / echo p50 (goal <= 1.5), and how many
new TCP connections to the upstream each call opened (0 when connections are
kept).  ``--stages production`` (the default, what the goal names) runs the
daemon as a production user would: metrics on, a JSON log line per request, a
paid provider with a price and a daily budget on the SQLite ledger;
``--stages lean`` turns those off, to show what they cost.

Run: make bench-chat   (or: .venv/bin/python bench/chat_overhead.py --rounds 12 --requests 200 --client async)
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import uvloop
from aiohttp import web

from ratatoskr_client import AsyncServiceClient, RatatoskrError, ServiceClient
from ratatoskr_client._proto.ratatoskr.v1 import gateway_pb2
from ratatoskr_client.convert import chat_options_to_pb, message_to_pb
from ratatoskr_client.types import ChatOptions, ContentDelta, Message

UPSTREAM_MODEL = "bench"
DAEMON_MODEL = f"up/{UPSTREAM_MODEL}"
MESSAGES = [
    Message(role="system", content="You are a helpful assistant."),
    Message(role="user", content="Say hello in one short sentence."),
]
REPLY_PIECES = ("Hello", "! How can I", " help you today?")
USAGE = {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30}
ECHO_METHOD = "/bench.Echo/Echo"
TIMEOUT_S = 30.0
#: (key, label, which process serves it); the order of the printed table.
FIGURES = (
    ("echo", "echo: bare grpc.aio unary, Unix socket", "echo"),
    ("daemon_health", "daemon Health.Check (no upstream)", "daemon"),
    ("direct_unary", "direct unary: httpx POST", "upstream"),
    ("daemon_unary", "daemon unary: client.chat", "daemon"),
    ("direct_ttft", "direct TTFT: httpx stream", "upstream"),
    ("daemon_ttft", "daemon TTFT: client.chat_stream", "daemon"),
)
FIGURE_KEYS = tuple(key for key, _, _ in FIGURES)
KINDS = ("unary", "ttft")
#: The figures whose calls reach the upstream.
UPSTREAM_FIGURES = ("direct_unary", "daemon_unary", "direct_ttft", "daemon_ttft")
#: The daemon's added p50 latency, as a multiple of a bare gRPC hop's p50.
GOAL = 1.5


# -- the upstream: a minimal, faithful OpenAI chat-completions server ---------------------------------


def _openai_chunk(delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": UPSTREAM_MODEL,
        "system_fingerprint": "fp_bench",
        "choices": choices,
        "usage": None,
    }


def _sse(data: Any) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def upstream_app() -> web.Application:
    unary = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": UPSTREAM_MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(REPLY_PIECES), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
        }
    ).encode()
    events = [
        _sse(_openai_chunk({"role": "assistant", "content": "", "refusal": None})),
        *(_sse(_openai_chunk({"content": piece})) for piece in REPLY_PIECES),
        _sse(_openai_chunk({}, "stop")),
    ]
    usage_event = _sse({**_openai_chunk(None), "usage": USAGE})
    done = _sse("[DONE]")
    #: Client addresses seen, to tell whether callers keep their connections (a new address: a new connection).
    peers: set[Any] = set()

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            peers.add(request.transport.get_extra_info("peername"))
        body = json.loads(await request.read())
        if not body.get("stream"):
            return web.Response(body=unary, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for event in events:  # one write per event, as a token-by-token server sends them
            await response.write(event)
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(usage_event)
        await response.write(done)
        await response.write_eof()
        return response

    async def connections(request: web.Request) -> web.StreamResponse:
        return web.json_response({"connections": len(peers)})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/bench/connections", connections)
    return app


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_upstream() -> None:
    runner = web.AppRunner(upstream_app(), handle_signals=False, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    print(sock.getsockname()[1], flush=True)
    await _until_signalled()
    await runner.cleanup()


async def serve_echo(path: str) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    print("ready", flush=True)
    await _until_signalled()
    await server.stop(0)


# -- processes ------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spawn_helper(*args: str, prefix: Sequence[str] = ()) -> tuple[subprocess.Popen[str], str]:
    """This script in one of its server roles; returns the process and the first line it prints.
    ``prefix`` runs it under another program (bench/instructions.py: valgrind)."""
    proc = subprocess.Popen([*prefix, sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line:
        proc.kill()
        raise SystemExit(f"helper {' '.join(args)} did not start")
    return proc, line


#: What each --stages profile configures beyond the provider.
STAGES = {
    "lean": "metrics off, logging at WARNING (no per-request log line), provider local (no budget)",
    "production": "metrics on, a log line per request (INFO, JSON), provider paid (local = false) with a price, "
    "a daily budget on its SQLite ledger",
}


def start_daemon(
    socket_path: Path, upstream_url: str, stages: str = "production", prefix: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """The daemon with one provider, "up", and no local models, configured as ``STAGES[stages]`` says.

    "production" is what the issue's goal measures: every stage a production user would have on
    (parameters, privacy, budget, context fit, retry/fallback, metrics, the request log; tracing off).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATATOSKR_")}
    env.update(
        RATATOSKR_SERVER__SOCKET_PATH=str(socket_path),
        RATATOSKR_LOCAL__PRELOAD="[]",
        RATATOSKR_LOCAL__AUTO_IMPORT_DEFAULT="false",
        RATATOSKR_PROVIDERS__UP__KIND="openai_compat",
        RATATOSKR_PROVIDERS__UP__BASE_URL=f"{upstream_url}/v1",
    )
    if stages == "lean":
        env.update(
            RATATOSKR_METRICS__ENABLED="false",
            RATATOSKR_LOGGING__LEVEL="WARNING",
            RATATOSKR_PROVIDERS__UP__LOCAL="true",
        )
    else:
        env.update(
            RATATOSKR_METRICS__PORT="0",
            RATATOSKR_LOGGING__LEVEL="INFO",
            RATATOSKR_LOGGING__FORMAT="json",
            RATATOSKR_PROVIDERS__UP__LOCAL="false",
            RATATOSKR_BUDGET__DAILY_USD="100000",
            RATATOSKR_BUDGET__LEDGER_PATH=str(socket_path.parent / "budget.sqlite3"),
            RATATOSKR_BUDGET__PRICES=json.dumps({"up/*": {"input_per_million": "0.15", "output_per_million": "0.6"}}),
        )
    # The request log goes to a file, as a service manager's journal takes it, not to this terminal.
    log = (socket_path.parent / "daemon.log").open("ab")
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "ratatoskr_server", "serve"], env=env, stderr=log)
    deadline = time.monotonic() + (300 if prefix else 60)  # under valgrind a start takes ~20x as long
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with status {proc.returncode}")
        try:
            with ServiceClient(socket_path) as client:
                if client.health(timeout=1) == "SERVING":
                    return proc
        except RatatoskrError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the daemon did not become SERVING in time")


def upstream_connections(port: int) -> int:
    """Connections the upstream has seen chat requests on (asked over a connection of its own, not counted)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/bench/connections")
        return int(json.loads(conn.getresponse().read())["connections"])
    finally:
        conn.close()


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the clients: each probe makes n sequential calls and returns their latencies in seconds ------------

Probe = Callable[[int], list[float]]


def request_bodies() -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """The upstream bodies the daemon sends for these messages (unary, stream) and the echo payload."""
    messages = [{"role": m.role, "content": m.content} for m in MESSAGES]
    unary = {"model": UPSTREAM_MODEL, "messages": messages}
    stream = {**unary, "stream": True, "stream_options": {"include_usage": True}}
    request = gateway_pb2.ChatRequest(
        messages=[message_to_pb(m) for m in MESSAGES], options=chat_options_to_pb(ChatOptions(model=DAEMON_MODEL))
    )
    return unary, stream, request.SerializeToString()


def _first_content(line: str) -> bool:
    """Whether an SSE line carries a chunk with a non-empty content delta."""
    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
        return False
    choices = json.loads(line[5:]).get("choices") or []
    return bool(choices and (choices[0].get("delta") or {}).get("content"))


class SyncClients:
    """httpx.Client, the blocking ServiceClient, and a blocking grpc channel to the echo service."""

    style = "sync: httpx.Client, ServiceClient, grpc.insecure_channel"

    def __init__(self, upstream_url: str, daemon_socket: Path, echo_socket: Path) -> None:
        self.unary_body, self.stream_body, self.echo_payload = request_bodies()
        self.options = ChatOptions(model=DAEMON_MODEL)
        self.http = httpx.Client(base_url=f"{upstream_url}/v1", timeout=TIMEOUT_S, trust_env=False)
        self.daemon = ServiceClient(daemon_socket, timeout=TIMEOUT_S)
        self.echo_channel = grpc.insecure_channel(f"unix:{echo_socket}")
        self.echo_call = self.echo_channel.unary_unary(ECHO_METHOD, None, None)  # bytes as they are

    def probes(self) -> dict[str, Probe]:
        return {
            "echo": self.echo,
            "daemon_health": self.daemon_health,
            "direct_unary": self.direct_unary,
            "daemon_unary": self.daemon_unary,
            "direct_ttft": self.direct_ttft,
            "daemon_ttft": self.daemon_ttft,
        }

    def echo(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            if self.echo_call(self.echo_payload, timeout=TIMEOUT_S) != self.echo_payload:
                raise SystemExit("the echo service answered something else")
            out.append(time.perf_counter() - start)
        return out

    def daemon_health(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            self.daemon.health()
            out.append(time.perf_counter() - start)
        return out

    def direct_unary(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            response = self.http.post("/chat/completions", json=self.unary_body)
            response.raise_for_status()
            text = response.json()["choices"][0]["message"]["content"]
            out.append(time.perf_counter() - start)
            assert text
        return out

    def daemon_unary(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            text = self.daemon.chat(MESSAGES, self.options).message.content
            out.append(time.perf_counter() - start)
            assert text
        return out

    def direct_ttft(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            first = 0.0
            with self.http.stream("POST", "/chat/completions", json=self.stream_body) as response:
                response.raise_for_status()
                for line in response.iter_lines():  # read to the end: the connection goes back to the pool
                    if not first and _first_content(line):
                        first = time.perf_counter() - start
            out.append(first)
        return out

    def daemon_ttft(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            first = 0.0
            for event in self.daemon.chat_stream(MESSAGES, self.options):
                if not first and isinstance(event, ContentDelta):
                    first = time.perf_counter() - start
            out.append(first)
        return out

    def close(self) -> None:
        self.http.close()
        self.daemon.close()
        self.echo_channel.close()


class AsyncClients:
    """httpx.AsyncClient, AsyncServiceClient and a grpc.aio channel, on one uvloop event loop."""

    style = "async (uvloop): httpx.AsyncClient, AsyncServiceClient, grpc.aio.insecure_channel"

    def __init__(self, upstream_url: str, daemon_socket: Path, echo_socket: Path) -> None:
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.unary_body, self.stream_body, self.echo_payload = request_bodies()
        self.options = ChatOptions(model=DAEMON_MODEL)
        self.http = httpx.AsyncClient(base_url=f"{upstream_url}/v1", timeout=TIMEOUT_S, trust_env=False)
        self.daemon = AsyncServiceClient(daemon_socket, timeout=TIMEOUT_S)
        self.echo_channel = grpc.aio.insecure_channel(f"unix:{echo_socket}")
        self.echo_call = self.echo_channel.unary_unary(ECHO_METHOD, None, None)  # bytes as they are

    def probes(self) -> dict[str, Probe]:
        # One run_until_complete per batch of n calls, so the loop's start and stop cost nothing per call.
        coros = {
            "echo": self.echo,
            "daemon_health": self.daemon_health,
            "direct_unary": self.direct_unary,
            "daemon_unary": self.daemon_unary,
            "direct_ttft": self.direct_ttft,
            "daemon_ttft": self.daemon_ttft,
        }
        return {key: self._blocking(coro) for key, coro in coros.items()}

    def _blocking(self, batch: Callable[[int], Coroutine[Any, Any, list[float]]]) -> Probe:
        return lambda n: self.loop.run_until_complete(batch(n))

    async def echo(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            if await self.echo_call(self.echo_payload, timeout=TIMEOUT_S) != self.echo_payload:
                raise SystemExit("the echo service answered something else")
            out.append(time.perf_counter() - start)
        return out

    async def daemon_health(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            await self.daemon.health()
            out.append(time.perf_counter() - start)
        return out

    async def direct_unary(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            response = await self.http.post("/chat/completions", json=self.unary_body)
            response.raise_for_status()
            text = response.json()["choices"][0]["message"]["content"]
            out.append(time.perf_counter() - start)
            assert text
        return out

    async def daemon_unary(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            text = (await self.daemon.chat(MESSAGES, self.options)).message.content
            out.append(time.perf_counter() - start)
            assert text
        return out

    async def direct_ttft(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            first = 0.0
            async with self.http.stream("POST", "/chat/completions", json=self.stream_body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not first and _first_content(line):
                        first = time.perf_counter() - start
            out.append(first)
        return out

    async def daemon_ttft(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            first = 0.0
            async for event in self.daemon.chat_stream(MESSAGES, self.options):
                if not first and isinstance(event, ContentDelta):
                    first = time.perf_counter() - start
            out.append(first)
        return out

    def close(self) -> None:
        async def close() -> None:
            await self.http.aclose()
            await self.daemon.close()
            await self.echo_channel.close(None)

        self.loop.run_until_complete(close())
        self.loop.close()


# -- measuring and reporting -----------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Measured:
    style: str
    upstream_url: str
    stages: str
    #: Latencies in seconds per figure, one list per round.
    samples: dict[str, list[list[float]]] = field(default_factory=lambda: {key: [] for key, _, _ in FIGURES})
    server_cpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FIGURE_KEYS, 0.0))
    client_cpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FIGURE_KEYS, 0.0))
    new_upstream_connections: dict[str, int] = field(default_factory=lambda: dict.fromkeys(UPSTREAM_FIGURES, 0))


def measure(rounds: int, requests: int, warmup: int, client: str, stages: str = "production") -> Measured:
    workdir = Path(tempfile.mkdtemp(prefix="rt-bench-", dir="/tmp"))
    daemon_socket, echo_socket = workdir / "daemon.sock", workdir / "echo.sock"
    started: list[subprocess.Popen[Any]] = []
    try:
        upstream, port_line = spawn_helper("--serve-upstream")
        started.append(upstream)
        port = int(port_line)
        echo, _ = spawn_helper("--serve-echo", str(echo_socket))
        started.append(echo)
        upstream_url = f"http://127.0.0.1:{port}"
        daemon = start_daemon(daemon_socket, upstream_url, stages)
        started.append(daemon)
        pids = {"upstream": upstream.pid, "echo": echo.pid, "daemon": daemon.pid}
        clients = (SyncClients if client == "sync" else AsyncClients)(upstream_url, daemon_socket, echo_socket)
        out = Measured(clients.style, upstream_url, stages)
        try:
            probes = clients.probes()
            for key in FIGURE_KEYS:
                probes[key](warmup)
            for r in range(rounds):
                # A rotating order, so no figure always follows the same one.
                for key, _, server in FIGURES[r % len(FIGURES) :] + FIGURES[: r % len(FIGURES)]:
                    touches_upstream = key in UPSTREAM_FIGURES
                    connections = upstream_connections(port) if touches_upstream else 0
                    server_before, client_before = cpu_seconds(pids[server]), time.process_time()
                    out.samples[key].append(probes[key](requests))
                    out.client_cpu_s[key] += time.process_time() - client_before
                    out.server_cpu_s[key] += cpu_seconds(pids[server]) - server_before
                    if touches_upstream:
                        out.new_upstream_connections[key] += upstream_connections(port) - connections
        finally:
            clients.close()
        return out
    finally:
        for proc in reversed(started):
            stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def summarize(m: Measured, rounds: int, requests: int) -> dict[str, Any]:
    calls = rounds * requests
    pooled = {key: [x * 1000 for block in blocks for x in block] for key, blocks in m.samples.items()}
    p50 = {key: percentile(v, 0.5) for key, v in pooled.items()}
    p99 = {key: percentile(v, 0.99) for key, v in pooled.items()}
    added = {kind: p50[f"daemon_{kind}"] - p50[f"direct_{kind}"] for kind in KINDS}
    added_by_round = {
        kind: [
            (statistics.median(m.samples[f"daemon_{kind}"][r]) - statistics.median(m.samples[f"direct_{kind}"][r]))
            * 1000
            for r in range(rounds)
        ]
        for kind in KINDS
    }
    return {
        "cores": os.cpu_count(),
        "client": m.style,
        "rounds": rounds,
        "requests_per_round": requests,
        "daemon": STAGES[m.stages],
        "p50_ms": {k: round(v, 3) for k, v in p50.items()},
        "p99_ms": {k: round(v, 3) for k, v in p99.items()},
        "server_cpu_ms_per_call": {k: round(v / calls * 1000, 3) for k, v in m.server_cpu_s.items()},
        "client_cpu_ms_per_call": {k: round(v / calls * 1000, 3) for k, v in m.client_cpu_s.items()},
        "new_upstream_connections_per_call": {k: round(n / calls, 3) for k, n in m.new_upstream_connections.items()},
        "added_p50_ms": {k: round(v, 3) for k, v in added.items()},
        "added_p50_ms_by_round": {k: [round(x, 3) for x in v] for k, v in added_by_round.items()},
        "added_over_echo_p50": {k: round(v / p50["echo"], 3) for k, v in added.items()},
        "goal_added_over_echo_p50": GOAL,
    }


def print_report(figures: dict[str, Any], upstream_url: str) -> None:
    rounds, requests = figures["rounds"], figures["requests_per_round"]
    print(
        f"chat overhead on {figures['cores']} cores: {rounds} interleaved rounds x {requests} sequential calls "
        f"per figure ({rounds * requests} each)"
    )
    print(f"client style, every figure: {figures['client']}")
    print(f"daemon: {figures['daemon']}; no local models;")
    print(
        f"        provider 'up' (openai_compat) = the aiohttp upstream at {upstream_url} "
        f"(its own process, instant reply in {len(REPLY_PIECES)} content chunks)"
    )
    print()
    print(f"{'figure':<40}{'p50 ms':>8}{'p99 ms':>8}   CPU per call: server      client")
    for key, label, server in FIGURES:
        print(
            f"{label:<40}{figures['p50_ms'][key]:8.3f}{figures['p99_ms'][key]:8.3f}   "
            f"{figures['server_cpu_ms_per_call'][key]:17.3f} ms {server:<9}"
            f"{figures['client_cpu_ms_per_call'][key]:.3f} ms"
        )
    print()
    for kind, name in (("unary", "unary"), ("ttft", "TTFT ")):
        added, ratio = figures["added_p50_ms"][kind], figures["added_over_echo_p50"][kind]
        spread = figures["added_p50_ms_by_round"][kind]
        verdict = "meets" if ratio <= GOAL else "misses"
        print(
            f"added by the daemon, {name} p50 {added:6.3f} ms   added / echo p50 = {ratio:.2f} "
            f"({verdict} the goal <= {GOAL:g})   by round {min(spread):.3f}..{max(spread):.3f} ms"
        )
    conns = figures["new_upstream_connections_per_call"]
    print(
        "new upstream TCP connections per call: "
        + ", ".join(f"{key.replace('_', ' ')} {value:.2f}" for key, value in conns.items())
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds")
    parser.add_argument("--requests", type=int, default=200, help="sequential calls per figure and round")
    parser.add_argument("--warmup", type=int, default=100, help="calls per figure before measuring")
    parser.add_argument(
        "--client",
        choices=("sync", "async"),
        default="sync",
        help="client style for every figure; sync (default) has the least client overhead here",
    )
    parser.add_argument(
        "--stages",
        choices=tuple(STAGES),
        default="production",
        help="production (default; the goal's figure): metrics, request log, budget on a paid provider; "
        "lean: none of those",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-echo", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        uvloop.run(serve_upstream())
        return 0
    if args.serve_echo:
        uvloop.run(serve_echo(args.serve_echo))
        return 0

    measured = measure(args.rounds, args.requests, args.warmup, args.client, args.stages)
    figures = summarize(measured, args.rounds, args.requests)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print_report(figures, measured.upstream_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
