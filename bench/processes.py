"""Does a second daemon process pay on this machine?  One daemon against two sharing the same TCP
ports (``server.reuse_port``), under the proxy load of bench/http_throughput.py: 32 concurrent
clients, each sending its next chat as soon as the last answered, to the same instant upstream.

Both sets run at once, each on its own ports, and the windows interleave (bench/http_throughput.py's
``measure``), so the machine's drift falls on both alike.  Per target it prints calls/s, latency and
the CPU all of that set's daemon processes spent per call, through the HTTP front (one aiohttp pool
of 32 connections, which the kernel spreads over the processes) and through gRPC over TCP
(``--channels`` channels, each its own connection, the clients taking turns on them: one connection
reaches one process).  gRPC shares one connection among all the channels a process opens to one
address, and the client keeps that default (for one daemon it is the cheaper way), so the bench
opens its channels itself, with a subchannel pool each, and sends the client's own Chat request as
bytes.  The daemons are bench/http_front.py's lean ones; the upstream's CPU is left out.

Run: .venv/bin/python bench/processes.py [--processes 2 --clients 32 --seconds 3 --rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
from chat_overhead import spawn_helper
from http_front import MESSAGES, free_port, start_daemon, stop
from http_throughput import Call, http_call, measure, print_figures, wait_ready

from ratatoskr_client import convert
from ratatoskr_client._proto.ratatoskr.v1 import gateway_pb2
from ratatoskr_client.types import ChatOptions, Message


def start_set(count: int, upstream_url: str, workdir: Path) -> tuple[list[subprocess.Popen[bytes]], int, int]:
    """``count`` daemons sharing one gRPC TCP port and one HTTP-front port: (processes, gRPC, HTTP)."""
    grpc_port, http_port = free_port(), free_port()
    settings = {
        "RATATOSKR_SERVER__REUSE_PORT": "true",
        "RATATOSKR_SERVER__TCP_ENABLED": "true",
        "RATATOSKR_SERVER__TCP_PORT": str(grpc_port),
    }
    procs = []
    for i in range(count):
        socket_path = workdir / f"p{count}-{i}.sock"  # each daemon keeps its own Unix socket
        procs.append(start_daemon(socket_path, upstream_url, http_port, settings))
    return procs, grpc_port, http_port


def chat_bytes() -> bytes:
    """The Chat request the client sends for http_front's messages to ``up/bench``."""
    return gateway_pb2.ChatRequest(
        messages=[convert.message_to_pb(Message(m["role"], m["content"])) for m in MESSAGES],
        options=convert.chat_options_to_pb(ChatOptions(model="up/bench")),
    ).SerializeToString()


def grpc_chat(channel: grpc.aio.Channel, request: bytes) -> Call:
    method = channel.unary_unary("/ratatoskr.v1.Gateway/Chat")  # bytes in, bytes out

    async def call() -> None:
        await method(request, timeout=60)

    return call


def turns(calls: list[Call]) -> Call:
    """One call that goes to each of ``calls`` in turn (the clients take turns on the channels)."""
    following = itertools.cycle(calls)

    async def call() -> None:
        await next(following)()

    return call


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--processes", type=int, default=2, help="daemons in the shared set (compared with 1)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--channels", type=int, default=8, help="gRPC channels (connections) per set")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    procs: list[subprocess.Popen[Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="rt-procs-", dir="/tmp"))
    try:
        upstream, port = spawn_helper("--serve-upstream")
        procs.append(upstream)
        upstream_url = f"http://127.0.0.1:{port}"
        sets = {n: start_set(n, upstream_url, workdir) for n in (1, args.processes)}
        for daemons, _, _ in sets.values():
            procs += daemons

        request = chat_bytes()

        async def run() -> dict[str, dict[str, float]]:
            connector = aiohttp.TCPConnector(limit=args.clients, limit_per_host=args.clients)
            timeout = aiohttp.ClientTimeout(total=60)
            targets: dict[str, Call] = {}
            servers: dict[str, tuple[int, ...]] = {}
            async with contextlib.AsyncExitStack() as stack:
                session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector, timeout=timeout))
                for n, (daemons, grpc_port, http_port) in sets.items():
                    url = f"http://127.0.0.1:{http_port}/v1/chat/completions"
                    await wait_ready(session, url, "up/bench", daemons[0])
                    pids = tuple(d.pid for d in daemons)
                    targets[f"{n} process(es), HTTP front"] = http_call(session, url, "up/bench")
                    servers[f"{n} process(es), HTTP front"] = pids
                    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel
                    channels = [
                        await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}", options))
                        for _ in range(args.channels)
                    ]
                    targets[f"{n} process(es), gRPC TCP"] = turns([grpc_chat(c, request) for c in channels])
                    servers[f"{n} process(es), gRPC TCP"] = pids
                return await measure(targets, servers, args)

        figures = asyncio.run(run())
        ratios = {
            f"{front}: {args.processes} processes / 1, {what}": round(
                figures[f"{args.processes} process(es), {front}"][key] / figures[f"1 process(es), {front}"][key], 3
            )
            for front in ("HTTP front", "gRPC TCP")
            for what, key in (("calls/s", "calls_per_s"), ("CPU per call", "server_cpu_ms_per_call"))
        }
        if args.json:
            print(json.dumps({"figures": figures, "ratios": ratios}, indent=2))
        else:
            print(
                f"{args.clients} concurrent clients, {args.rounds} rounds x {args.seconds:g} s per target, "
                f"closed loop, one chat per call; gRPC over {args.channels} channels (cpus: {os.cpu_count()})"
            )
            print_figures(figures, ratios, "daemons'")
    finally:
        for proc in reversed(procs):
            stop(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
