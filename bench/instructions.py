"""Instructions per call, counted by valgrind's callgrind: the gateway's own cost, without the noise.

Wall-clock and CPU-time figures on a shared 2-core VM move by ±30% from one minute to the next,
which hides any change smaller than that.  An instruction count does not move: the same code on
the same input executes the same instructions (to about 0.3% here, with hash randomisation off).
So this is the figure to compare two versions of the per-call path by; the others say what a
user sees.

Each server runs under callgrind with instrumentation off (at start-up speed), is warmed up, and
is counted only while ``--calls`` sequential calls run (``callgrind_control -i on/off``); every
thread of the server process counts.  The client and the upstream run natively and are not
counted.  Figures:
  echo            the bare grpc.aio echo service of bench/chat_overhead.py (the floor of a gRPC call)
  health          the daemon's Health RPC (the gRPC front with nothing behind it)
  lean unary      a chat through the daemon, lean stages (bench/chat_overhead.py --stages lean)
  unary           a chat through the daemon, production stages (the goal's configuration)
  stream          the same chat streamed, production stages
The upstream is bench/chat_overhead.py's loopback OpenAI double.

Needs valgrind (Debian: ``apt-get install valgrind``).
Run: .venv/bin/python bench/instructions.py [--calls 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from chat_overhead import ECHO_METHOD, MESSAGES, request_bodies, spawn_helper, start_daemon, stop

from ratatoskr_client import ServiceClient
from ratatoskr_client.types import ChatOptions

WARMUP = 30


def callgrind(out: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        f"--log-file={out}.log",
    ]


def control(pid: int, *command: str) -> None:
    """Tell the callgrind running as ``pid`` to do ``command`` (quietly: it reports on stderr)."""
    subprocess.run(["callgrind_control", *command, str(pid)], check=True, capture_output=True)


def counted(pid: int, out: Path, calls: int, one: Callable[[], object]) -> int:
    """Instructions per call of process ``pid`` (under ``callgrind(out)``) while ``one`` runs ``calls`` times."""
    for _ in range(WARMUP):
        one()
    control(pid, "-i", "on")
    for _ in range(calls):
        one()
    control(pid, "-i", "off")
    control(pid, "--dump")
    total = 0
    for dump in out.parent.glob(f"{out.name}.*[0-9]"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
        dump.unlink()
    return total // calls


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="counted calls per figure")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    os.environ["PYTHONHASHSEED"] = "0"  # the same dict and set layouts every run: the same instructions
    workdir = Path(tempfile.mkdtemp(prefix="rt-instr-", dir="/tmp"))
    figures: dict[str, int] = {}
    procs: list[subprocess.Popen[Any]] = []
    try:
        upstream, port = spawn_helper("--serve-upstream")
        procs.append(upstream)
        upstream_url = f"http://127.0.0.1:{port}"

        echo_out, echo_socket = workdir / "echo.out", workdir / "echo.sock"
        echo, _ = spawn_helper("--serve-echo", str(echo_socket), prefix=callgrind(echo_out))
        procs.append(echo)
        payload = request_bodies()[2]
        with grpc.insecure_channel(f"unix:{echo_socket}") as channel:
            call = channel.unary_unary(ECHO_METHOD, None, None)
            figures["echo"] = counted(echo.pid, echo_out, args.calls, lambda: call(payload, timeout=60))
        stop(echo)

        options = ChatOptions(model="up/bench")
        for stages in ("lean", "production"):
            out, socket = workdir / f"{stages}.out", workdir / f"{stages}" / "r.sock"
            socket.parent.mkdir()
            daemon = start_daemon(socket, upstream_url, stages, prefix=callgrind(out))
            procs.append(daemon)
            with ServiceClient(socket, timeout=60) as client:
                if stages == "lean":
                    figures["health"] = counted(daemon.pid, out, args.calls, client.health)
                    figures["lean unary"] = counted(daemon.pid, out, args.calls, lambda: client.chat(MESSAGES, options))
                else:
                    figures["unary"] = counted(daemon.pid, out, args.calls, lambda: client.chat(MESSAGES, options))
                    figures["stream"] = counted(
                        daemon.pid, out, args.calls, lambda: list(client.chat_stream(MESSAGES, options))
                    )
            stop(daemon)
    finally:
        for proc in reversed(procs):
            stop(proc)
    if args.json:
        print(json.dumps({"instructions_per_call": figures, "calls": args.calls}, indent=2))
        return 0
    print(f"instructions per call in the server process (callgrind, {args.calls} counted calls each)")
    for name, value in figures.items():
        ratio = f"   {value / figures['echo']:5.2f}x echo" if name != "echo" else ""
        print(f"  {name:12s} {value / 1e6:8.3f} M{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
