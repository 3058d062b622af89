"""Start to SERVING and idle memory (issue 17): ``ratatoskr serve`` from spawn until it logs that it
serves, with no model and with the default model (MiniLM) preloaded, and its resident memory once
idle; then where the start goes (interpreter, imports by package, gRPC bind, model load). Baselines
measured in the same run: ``python -c pass`` and a bare grpc.aio server on uvloop turning SERVING.

Children run with bytecode written and reused, as an installed daemon runs from its second start on
(PYTHONDONTWRITEBYTECODE is dropped; one untimed start compiles what is missing). Goals: SERVING with
the default model <= 1 s; idle RSS <= 150 MB, with MiniLM <= 350 MB.

Run: make bench-start   (or: .venv/bin/python bench/startup.py --rounds 5)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

BARE_SERVER = """
import asyncio, sys, grpc, uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
async def main():
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port("unix:" + sys.argv[1])
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    print("serving", flush=True)
    await server.wait_for_termination()
uvloop.run(main())
"""


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("RATATOSKR_") and k != "PYTHONDONTWRITEBYTECODE"}
    return {**out, **extra}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed_start(command: list[str], environment: dict[str, str], ready: Callable[[str], bool]) -> dict[str, float]:
    """Spawn ``command``, read its output until ``ready(line)``; the seconds to that line, to each
    JSON log message on the way (by its "msg"), and the resident memory after a second of idling."""
    begin = time.perf_counter()
    proc = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marks: dict[str, float] = {}
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            now = time.perf_counter() - begin
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                marks.setdefault(str(record.get("msg", "")), now)
                if record.get("msg") == "model loaded":
                    marks["load_ms"] = float(record["load_ms"]) / 1000
            if ready(line):
                marks["ready"] = now
                break
        else:
            raise SystemExit(f"{command[:4]} exited before it was ready (status {proc.wait()})")
        time.sleep(1.0)
        marks["rss_mb"] = rss_mb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return marks


def import_profile(module: str) -> tuple[float, dict[str, float]]:
    """``-X importtime`` of ``module`` in a fresh interpreter, as ``ratatoskr serve`` imports it (the
    command first marks httpx's CLI absent): the cumulative ms, and the self time summed per
    top-level package (what each dependency costs the start)."""
    probe = f"import ratatoskr_server.cli as cli; cli._without_httpx_cli(); import {module}"
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", probe], capture_output=True, text=True, env=env())
    by_package: dict[str, float] = defaultdict(float)
    total = 0.0
    for line in run.stderr.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        by_package[parts[2].split(".")[0]] += int(parts[0]) / 1000
        if parts[2] == module:
            total = int(parts[1]) / 1000
    return total, dict(by_package)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; each figure is their median")
    parser.add_argument("--model", default="", help="model folder (default: the configured default embed model)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from ratatoskr_server.config import load_settings
    from ratatoskr_server.local.manifest import MANIFEST_FILE

    local = load_settings().local
    model_dir = Path(args.model) if args.model else local.resolved_model_dir() / local.default_embed_model
    if not (model_dir / MANIFEST_FILE).is_file():
        raise SystemExit(f"no model at {model_dir}: run `make bench-embed` or `ratatoskr models import` first")
    work = Path(tempfile.mkdtemp(prefix="rt-start-"))

    def daemon(preload: list[str], round_no: int) -> dict[str, float]:
        socket = work / f"d{round_no}-{len(preload)}.sock"
        environment = env(
            RATATOSKR_SERVER__SOCKET_PATH=str(socket),
            RATATOSKR_LOGGING__FORMAT="json",
            RATATOSKR_LOGGING__LEVEL="INFO",
            RATATOSKR_LOCAL__MODEL_DIR=str(model_dir.parent),
            RATATOSKR_LOCAL__PRELOAD=json.dumps(preload),
            RATATOSKR_LOCAL__DEFAULT_EMBED_MODEL=model_dir.name,
            RATATOSKR_LOCAL__AUTO_IMPORT_DEFAULT="false",
            RATATOSKR_METRICS__ENABLED="false",
        )
        return timed_start(
            [sys.executable, "-m", "ratatoskr_server", "serve"], environment, lambda line: "serving (" in line
        )

    def bare(round_no: int) -> dict[str, float]:
        socket = work / f"bare{round_no}.sock"
        return timed_start(
            [sys.executable, "-c", BARE_SERVER, str(socket)], env(), lambda line: line.strip() == "serving"
        )

    def interpreter() -> float:
        begin = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=env())
        return time.perf_counter() - begin

    daemon([model_dir.name], -1)  # compiles and caches bytecode; not timed
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    pythons: list[float] = []
    for n in range(args.rounds):
        pythons.append(interpreter())
        rows["bare grpc.aio server"].append(bare(n))
        rows["ratatoskr, no model"].append(daemon([], n))
        rows["ratatoskr, default model"].append(daemon([model_dir.name], n))

    def med(name: str, key: str) -> float:
        values = [r[key] for r in rows[name] if key in r]
        return statistics.median(values) if values else float("nan")

    with_model, no_model = "ratatoskr, default model", "ratatoskr, no model"
    total, packages = import_profile("ratatoskr_server.daemon")
    if args.json:
        figures = {
            "rounds": args.rounds,
            "cores": os.cpu_count(),
            "python_ms": round(statistics.median(pythons) * 1000, 1),
            "serving_ms": {name: round(med(name, "ready") * 1000, 1) for name in rows},
            "idle_rss_mb": {name: round(med(name, "rss_mb"), 1) for name in rows},
            "listening_ms": round(med(with_model, "listening") * 1000, 1),
            "model_load_ms": round(med(with_model, "load_ms") * 1000, 1),
            "import_ms": round(total, 1),
            "import_self_ms_by_package": {
                k: round(v, 1) for k, v in sorted(packages.items(), key=lambda i: -i[1])[:12]
            },
        }
        print(json.dumps(figures, indent=2))
        return 0
    print(f"start to SERVING, median of {args.rounds} rounds (cpus: {os.cpu_count()}; a shared machine is noisy)")
    print(f"  python -c pass                        {statistics.median(pythons) * 1000:8.0f} ms")
    for name in rows:
        print(f"  {name:<37} {med(name, 'ready') * 1000:8.0f} ms   idle RSS {med(name, 'rss_mb'):6.0f} MB")
    print(
        f"  goal: default model <= 1000 ms -> {med(with_model, 'ready') * 1000:.0f} ms "
        f"({med(with_model, 'ready') / 1.0:.2f} of the goal); idle RSS <= 150 / 350 MB -> "
        f"{med(no_model, 'rss_mb'):.0f} / {med(with_model, 'rss_mb'):.0f} MB"
    )
    print("where the start with the default model goes (medians):")
    print(f"  listening (imports, settings, bind)   {med(with_model, 'listening') * 1000:8.0f} ms")
    print(f"  model load (pool's load_ms)           {med(with_model, 'load_ms') * 1000:8.0f} ms")
    print(f"  import ratatoskr_server.daemon        {total:8.0f} ms cumulative; by package (self time):")
    for package, ms in sorted(packages.items(), key=lambda item: -item[1])[:12]:
        print(f"    {package:<35} {ms:8.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
