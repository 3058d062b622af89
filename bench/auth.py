"""The latency caller keys add to a chat call, p50 and p99, through the daemon and in process.

Through the daemon: one daemon with TCP on loopback, ``tcp_require_auth = false`` and one caller key
(scope chat, an rpm limit high enough never to refuse, so the rate window is kept too), in front of
the zero-latency OpenAI-compatible upstream of ``bench/chat_overhead.py``.  The same chat goes over
the same TCP port anonymously (the guard only finds no ``authorization``) and with the key (parse,
id lookup, SHA-256, constant-time compare, scope check, rate window), in interleaved rounds so a
noisy machine's drift is shared; the difference of the two is what auth adds.  In process:
``Guard.admit`` alone, timed over many calls.

Run: .venv/bin/python bench/auth.py [--rounds 6 --requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chat_overhead as co  # the upstream and process helpers of the chat benchmark

from ratatoskr_client import ServiceClient
from ratatoskr_client.types import ChatOptions
from ratatoskr_server.config import load_settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.fronts.grpc.auth import Guard
from ratatoskr_server.keys import new_token


def _config(directory: Path, upstream_url: str, stored: str) -> Path:
    secrets = directory / "secrets.toml"
    secrets.write_text(f'BENCH_KEY = "{stored}"\n')
    secrets.chmod(0o600)
    config = directory / "config.toml"
    config.write_text(
        f'secrets_file = "{secrets}"\n'
        f'[server]\nsocket_path = "{directory / "r.sock"}"\ntcp_enabled = true\ntcp_port = 0\n'
        "tcp_require_auth = false\n"
        '[metrics]\nenabled = false\n[logging]\nlevel = "WARNING"\n'
        "[local]\npreload = []\nauto_import_default = false\n"
        f'[providers.up]\nkind = "openai_compat"\nbase_url = "{upstream_url}/v1"\nlocal = true\n'
        '[callers.bench]\nkey_hash = "${BENCH_KEY}"\nscopes = ["chat"]\nrpm = 100000000\n'
    )
    return config


def _start(config: Path, socket_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATATOSKR_")}
    proc = subprocess.Popen([sys.executable, "-m", "ratatoskr_server", "serve", "--config", str(config)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with status {proc.returncode}")
        try:
            with ServiceClient(socket_path) as client:
                if client.health(timeout=1) == "SERVING":
                    return proc
        except Exception:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the daemon did not become SERVING within 60 s")


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50": round(statistics.median(ordered) * 1000, 3), "p99": round(co.percentile(ordered, 0.99) * 1000, 3)}


def through_daemon(rounds: int, requests: int, warmup: int) -> dict[str, dict[str, float]]:
    token, stored = new_token()
    upstream, port = co.spawn_helper("--serve-upstream")
    directory = Path(tempfile.mkdtemp(prefix="rt-bench-", dir="/tmp"))
    daemon = _start(_config(directory, f"http://127.0.0.1:{port}", str(stored)), directory / "r.sock")
    try:
        with ServiceClient(directory / "r.sock") as local:
            tcp = next(a for a in local.status().listen if not a.startswith("unix:"))
        messages, options = co.MESSAGES, ChatOptions(model=co.DAEMON_MODEL)
        samples: dict[str, list[float]] = {"anonymous": [], "with_key": []}
        with (
            ServiceClient(tcp, timeout=30, api_key="") as anonymous,
            ServiceClient(tcp, timeout=30, api_key=token) as keyed,
        ):
            clients = {"anonymous": anonymous, "with_key": keyed}
            for client in clients.values():
                for _ in range(warmup):
                    client.chat(messages, options)
            for r in range(rounds):
                order = list(clients) if r % 2 == 0 else list(reversed(clients))
                for name in order:
                    for _ in range(requests):
                        started = time.perf_counter()
                        clients[name].chat(messages, options)
                        samples[name].append(time.perf_counter() - started)
        return {name: _ms(values) for name, values in samples.items()}
    finally:
        co.stop(daemon)
        co.stop(upstream)


def in_process(calls: int) -> dict[str, float]:
    token, stored = new_token()
    settings = load_settings(
        local={"preload": []}, callers={"bench": {"key_hash": str(stored), "scopes": ["chat"], "rpm": 10**9}}
    )
    guard = Guard(settings)
    metadata = (("authorization", f"Bearer {token}"),)

    async def run() -> list[float]:
        out = []
        for _ in range(calls):
            ctx = RequestContext.start()
            started = time.perf_counter()
            await guard.admit("Chat", "ipv4:127.0.0.1:5000", metadata, ctx)
            out.append(time.perf_counter() - started)
        return out

    samples = asyncio.run(run())
    ordered = sorted(samples)
    return {
        "p50_us": round(statistics.median(ordered) * 1e6, 2),
        "p99_us": round(co.percentile(ordered, 0.99) * 1e6, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    daemon = through_daemon(args.rounds, args.requests, args.warmup)
    guard = in_process(20000)
    added = {q: round(daemon["with_key"][q] - daemon["anonymous"][q], 3) for q in ("p50", "p99")}
    report = {"daemon_ms": daemon, "added_ms": added, "guard_admit": guard}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    n = args.rounds * args.requests
    print(f"chat over loopback TCP, {n} calls each, interleaved ({args.rounds} rounds)")
    for name, figures in daemon.items():
        print(f"  {name:<10} p50 {figures['p50']:.3f} ms   p99 {figures['p99']:.3f} ms")
    print(f"  auth adds  p50 {added['p50']:+.3f} ms   p99 {added['p99']:+.3f} ms")
    print(f"Guard.admit in process: p50 {guard['p50_us']:.1f} µs   p99 {guard['p99_us']:.1f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
