"""Embedding throughput: the daemon against raw ONNX Runtime on the same model and machine.

Figures measured side by side in one run:
  (a) raw in-process onnxruntime (tokenize + session.run) at its best batch size,
  (b) the daemon's Embed over its Unix socket, one client sending 32-input batches,
  (c) the daemon with 64 concurrent clients each sending one short text per call,
  (d) when the peer is installed (``make bench-peers``; ``bench/infinity_peer.py``): Infinity's
      ONNX engine on the same MiniLM checkpoint, 64 concurrent clients each posting one short
      text per call to its REST API, as (c) does to ours.
Shared and virtual machines drift from second to second, so the figures are
taken in interleaved rounds (a, b, c, d, a, b, c, d, ...) and each is the median of
its rounds.  It prints sentences/s, the ratios b/a, c/a and c/d (goals: >= 0.95,
>= 0.8 and >= 1.5), and for (c) the CPU time per request spent by the daemon and by the
client, which on a small machine compete with the model for the same cores.

Run: make bench-embed   (or: .venv/bin/python bench/embed.py --rounds 5 --seconds 4 [--no-peer])
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import infinity_peer
import numpy as np
import onnxruntime as ort
import uvloop
from http_front import free_port
from tokenizers import Tokenizer

from ratatoskr_client import AsyncServiceClient, RatatoskrError, ServiceClient
from ratatoskr_server.config import load_settings
from ratatoskr_server.local.manifest import ModelManifest

SUBJECTS = ["The cat", "A new phone", "Our team", "The river", "This recipe", "The old bridge", "My neighbour"]
VERBS = ["needs", "shows", "finds", "breaks", "helps", "follows", "changes"]
OBJECTS = ["the morning light", "a quiet road", "every small detail", "the final answer", "two red apples"]


def short_sentences(n: int) -> list[str]:
    """Deterministic short sentences of 6-10 tokens, like typical search queries or titles."""
    return [
        f"{SUBJECTS[i % len(SUBJECTS)]} {VERBS[(i // 7) % len(VERBS)]} {OBJECTS[(i // 49) % len(OBJECTS)]}"
        for i in range(n)
    ]


class RawOnnxRuntime:
    """A bare session with the daemon's graph optimisations, fed by the model's tokenizer."""

    BATCHES = (1, 8, 16, 32, 64)

    def __init__(self, model_dir: Path) -> None:
        self.manifest = ModelManifest.read(model_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(model_dir / self.manifest.onnx_file), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = Tokenizer.from_file(str(model_dir / self.manifest.tokenizer_file))
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.tokenizer.enable_truncation(self.manifest.max_length)
        self.texts = short_sentences(4096)

    def rate(self, batch: int, seconds: float) -> float:
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            chunk = self.texts[(done % 4000) : (done % 4000) + batch]
            encodings = self.tokenizer.encode_batch(chunk)
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": np.array([e.attention_mask for e in encodings])}
            feeds["token_type_ids"] = np.zeros_like(ids)
            self.session.run([self.manifest.output_name], feeds)
            done += len(chunk)
        return done / (time.perf_counter() - start)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_daemon(model_dir: Path, socket: Path, settings: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """The daemon with default settings (plus ``settings``, RATATOSKR_* variables) on a private socket."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATATOSKR_")}
    env.update(settings or {})
    env.update(
        RATATOSKR_SERVER__SOCKET_PATH=str(socket),
        RATATOSKR_METRICS__ENABLED="false",
        RATATOSKR_LOGGING__LEVEL="WARNING",
        RATATOSKR_LOCAL__MODEL_DIR=str(model_dir.parent),
        RATATOSKR_LOCAL__PRELOAD=json.dumps([model_dir.name]),
        RATATOSKR_LOCAL__DEFAULT_EMBED_MODEL=model_dir.name,
    )
    proc = subprocess.Popen([sys.executable, "-m", "ratatoskr_server", "serve"], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with ServiceClient(socket) as client:
                if client.health(timeout=1) == "SERVING":
                    return proc
        except RatatoskrError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the daemon did not become SERVING within 60 s")


def daemon_batches(socket: Path, seconds: float, batch: int = 32) -> float:
    texts = short_sentences(4096)
    with ServiceClient(socket, timeout=60) as client:
        client.embed(texts[:batch])  # warm up
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            client.embed(texts[(done % 4000) : (done % 4000) + batch])
            done += batch
        return done / (time.perf_counter() - start)


async def daemon_concurrent(socket: Path, seconds: float, clients: int = 64) -> tuple[float, int]:
    """(sentences/s, calls made)."""
    texts = short_sentences(4096)
    done = 0
    stop_at = time.perf_counter() + seconds

    async def one(client: AsyncServiceClient, k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < stop_at:
            await client.embed([texts[i % 4096]])
            done += 1
            i += clients

    # A handful of channels, as a fleet of services would open; each carries many concurrent calls.
    channels = [AsyncServiceClient(socket, timeout=60) for _ in range(4)]
    try:
        await asyncio.gather(*(c.embed(["warm up"]) for c in channels))
        start = time.perf_counter()
        await asyncio.gather(*(one(channels[k % len(channels)], k) for k in range(clients)))
        return done / (time.perf_counter() - start), done
    finally:
        for c in channels:
            await c.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each figure is their median")
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per figure and round")
    parser.add_argument("--model", default="", help="model folder (default: the configured default embed model)")
    parser.add_argument("--no-peer", action="store_true", help="leave Infinity out even when it is installed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    settings = load_settings()
    local = settings.local
    model_dir = Path(args.model) if args.model else local.resolved_model_dir() / local.default_embed_model
    if not (model_dir / "manifest.json").is_file():
        raise SystemExit(f"no model at {model_dir}; run `make model` first")

    raw = RawOnnxRuntime(model_dir)
    socket = Path(tempfile.mkdtemp(prefix="rt-bench-", dir="/tmp")) / "bench.sock"
    proc = start_daemon(model_dir, socket)
    peer: subprocess.Popen[bytes] | None = None
    peer_port = 0
    per_batch: dict[int, list[float]] = {b: [] for b in raw.BATCHES}
    b_rates: list[float] = []
    c_rates: list[float] = []
    d_rates: list[float] = []
    daemon_cpu_ms: list[float] = []
    client_cpu_ms: list[float] = []
    try:
        if infinity_peer.installed() and not args.no_peer:
            peer_port = free_port()
            peer = infinity_peer.start(peer_port, socket.parent / "infinity.log")
            probe = short_sentences(8)
            with ServiceClient(socket, timeout=60) as client:
                cosine = infinity_peer.same_model(client.embed(probe).vectors, infinity_peer.vectors(peer_port, probe))
            if cosine < 0.999:
                raise SystemExit(f"Infinity's vectors are not the daemon's (cosine {cosine:.4f}): not the same model")
        for _ in range(args.rounds):
            for batch in raw.BATCHES:
                per_batch[batch].append(raw.rate(batch, args.seconds / len(raw.BATCHES) * 2))
            b_rates.append(daemon_batches(socket, args.seconds))
            daemon_before, client_before = cpu_seconds(proc.pid), time.process_time()
            rate, calls = uvloop.run(daemon_concurrent(socket, args.seconds))
            daemon_cpu_ms.append((cpu_seconds(proc.pid) - daemon_before) / calls * 1000)
            client_cpu_ms.append((time.process_time() - client_before) / calls * 1000)
            c_rates.append(rate)
            if peer is not None:
                texts = short_sentences(4096)
                d_rates.append(uvloop.run(infinity_peer.concurrent(peer_port, texts, args.seconds))[0])
    finally:
        for running in (proc, peer):
            if running is not None:
                running.send_signal(signal.SIGTERM)
                running.wait(timeout=30)

    raw_median = {batch: statistics.median(rates) for batch, rates in per_batch.items()}
    best_batch = max(raw_median, key=lambda batch: raw_median[batch])
    a, b, c = raw_median[best_batch], statistics.median(b_rates), statistics.median(c_rates)
    figures = {
        "model": model_dir.name,
        "cores": os.cpu_count(),
        "rounds": args.rounds,
        "raw_by_batch": {str(k): round(v, 1) for k, v in raw_median.items()},
        "a_raw_best": round(a, 1),
        "a_best_batch": best_batch,
        "b_daemon_batch32": round(b, 1),
        "c_daemon_64_concurrent": round(c, 1),
        "b_over_a": round(b / a, 3),
        "c_over_a": round(c / a, 3),
        "c_daemon_cpu_ms_per_call": round(statistics.median(daemon_cpu_ms), 2),
        "c_client_cpu_ms_per_call": round(statistics.median(client_cpu_ms), 2),
        "raw_cpu_ms_per_sentence": round((os.cpu_count() or 1) / a * 1000, 2),
    }
    if d_rates:
        d = statistics.median(d_rates)
        figures.update(d_infinity_64_concurrent=round(d, 1), d_over_a=round(d / a, 3), c_over_d=round(c / d, 3))
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(
        f"model {model_dir.name} on {os.cpu_count()} cores; short sentences; "
        f"median of {args.rounds} interleaved rounds of {args.seconds:g} s"
    )
    print("raw onnxruntime by batch size: " + ", ".join(f"{k}: {v:.0f}/s" for k, v in raw_median.items()))
    print(f"(a) raw onnxruntime, best batch {best_batch:>3}    {a:8.1f} sentences/s")
    print(f"(b) daemon Embed, 32-input batches     {b:8.1f} sentences/s   b/a = {b / a:.3f}  (goal >= 0.95)")
    print(f"(c) daemon, 64 concurrent 1-text calls {c:8.1f} sentences/s   c/a = {c / a:.3f}  (goal >= 0.80)")
    print(
        f"    (c) CPU per call: daemon {figures['c_daemon_cpu_ms_per_call']} ms, "
        f"client {figures['c_client_cpu_ms_per_call']} ms; raw model {figures['raw_cpu_ms_per_sentence']} ms/sentence"
    )
    if d_rates:
        d = figures["d_infinity_64_concurrent"]
        print(
            f"(d) Infinity ONNX, 64 concurrent 1-text  {d:8.1f} sentences/s   d/a = {figures['d_over_a']:.3f}; "
            f"c/d = {figures['c_over_d']:.3f}  (goal >= 1.5)"
        )
    else:
        print(f"(d) Infinity: not run ({infinity_peer.ENV} is missing: make bench-peers; or --no-peer)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
