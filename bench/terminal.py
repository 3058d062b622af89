"""What the terminal views cost: ``ratatoskr tree`` built and drawn in process (cold and warm), the
whole command as a user runs it (interpreter start and imports included; the issue's goal is 100 ms),
both drawn anew and printed from its cache (terminal/tree_cache.py), and the import time of the CLI
module that every command, ``serve`` included, pays.

Children run with bytecode written and reused (PYTHONDONTWRITEBYTECODE dropped), as an installed
package runs; a first untimed run compiles it.

Run: .venv/bin/python bench/terminal.py [--config FILE] [--runs 50]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from startup import env  # the same child environment as the start bench: bytecode written and reused

REPO = Path(__file__).resolve().parent.parent
PROVIDERS = """
[providers.ollama]
kind = "ollama"
base_url = "http://127.0.0.1:11434"
local = true
models = ["llama3.2", "qwen2.5"]
[providers.openai]
kind = "openai_compat"
base_url = "https://api.openai.example/v1"
models = ["gpt-4o", "gpt-4o-mini"]
[providers.azure]
kind = "openai_compat"
base_url = "https://mine.openai.azure.example/openai/deployments/{model}"
dedicated = true
[providers.anthropic]
kind = "anthropic"
base_url = "https://api.anthropic.example"
"""


def import_ms(module: str) -> float:
    """Cumulative import time of ``module`` in a fresh interpreter (``-X importtime``), in ms."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True, env=env()
    )
    for line in run.stderr.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2] == module:
            return int(parts[1]) / 1000
    raise SystemExit(f"no import time line for {module}: {run.stderr[-300:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", help="a configuration to draw (default: four providers and local.model_dir)")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    config = args.config
    if config is None:
        config = str(Path(tempfile.mkdtemp(prefix="rt-tree-")) / "config.toml")
        Path(config).write_text(PROVIDERS, encoding="utf-8")

    start = time.perf_counter()
    from rich.console import Console

    from ratatoskr_server.config import load_settings
    from ratatoskr_server.terminal.tree import backends, build_tree

    imports = time.perf_counter() - start
    settings = load_settings(config)

    def draw() -> float:
        begin = time.perf_counter()
        console = Console(file=io.StringIO(), width=120)
        console.print(build_tree(backends(settings)))
        return time.perf_counter() - begin

    cold = draw()
    warm = [draw() for _ in range(args.runs)]
    os.utime(config, (time.time() - 3600,) * 2)  # edited a while ago: past the cache's racy window
    cache_root = Path(tempfile.mkdtemp(prefix="rt-tree-cache-"))

    def command(cache: Path) -> float:
        begin = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "ratatoskr_server", "tree", "--config", config],
            check=True,
            capture_output=True,
            env=env(XDG_CACHE_HOME=str(cache)),
            cwd=REPO,
        )
        return time.perf_counter() - begin

    command(cache_root / "compile")  # writes the bytecode the timed runs reuse
    anew = [command(cache_root / f"anew-{i}") for i in range(7)]
    kept = [command(cache_root / "kept") for _ in range(15)][1:]  # the first of these fills the cache
    baseline = []
    for _ in range(5):
        begin = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=env())
        baseline.append(time.perf_counter() - begin)
    print(f"tree of {len(backends(settings))} backends (cpus: {os.cpu_count()}; a shared machine is noisy)")
    print(f"  built and drawn in process, first   {cold * 1000:8.2f} ms")
    print(
        f"  built and drawn in process, warm    {statistics.median(warm) * 1000:8.2f} ms p50  "
        f"{max(warm) * 1000:8.2f} ms max  ({args.runs} runs)"
    )
    print(f"  rich + config + tree modules import {imports * 1000:8.2f} ms (once per process)")
    print(f"  `ratatoskr tree` drawn anew         {statistics.median(anew) * 1000:8.2f} ms p50 of {len(anew)}")
    print(
        f"  `ratatoskr tree` kept (goal 100 ms) {statistics.median(kept) * 1000:8.2f} ms p50 of {len(kept)}  "
        f"{max(kept) * 1000:8.2f} ms max"
    )
    print(f"  `python -c pass` for scale          {statistics.median(baseline) * 1000:8.2f} ms p50 of 5")
    print(f"  import ratatoskr_server.cli         {import_ms('ratatoskr_server.cli'):8.2f} ms cumulative")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
