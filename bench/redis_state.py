"""Shared state in Redis against the in-process stores, side by side: what a replica pays per call.

Cases, p50/p99 in µs, each on memory, SQLite (ledger only) and Redis:
  - budget reserve + settle, one bucket (a global day) and four (day, month, caller, model);
  - the same with 32 calls at once (per call, as they interleave on the loop and the connection);
  - rate-limit admit (rpm and tpm) and recording a call's tokens;
  - cache get of one entry (a hit), of 32 (one MGET), and put of one 1 KiB entry.
Redis is a local redis-server on a Unix socket started here (``--save '' --appendonly no``), or
``--url`` for another one (a network hop adds its round trip to every Redis figure).  Timing on a
shared machine is noisy; compare the columns of one run.

Run: .venv/bin/python bench/redis_state.py [--rounds 2000] [--url redis://host:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from stage_timing import percentiles, timed

from ratatoskr_server.config import StateSettings
from ratatoskr_server.state.budget import Bucket, BudgetLedger, Reservation
from ratatoskr_server.state.cache import MemoryResponseCache, ResponseCache
from ratatoskr_server.state.memory import MemoryBudgetLedger
from ratatoskr_server.state.rates import MemoryRates, RateCounter
from ratatoskr_server.state.redis_budget import RedisBudgetLedger
from ratatoskr_server.state.redis_cache import RedisResponseCache
from ratatoskr_server.state.redis_conn import RedisState
from ratatoskr_server.state.redis_rates import RedisRates
from ratatoskr_server.state.sqlite import SqliteBudgetLedger

END = datetime(2100, 1, 1, tzinfo=UTC)
ONE = [Bucket("global", "day:2026-12-02", Decimal(10**6), END)]
FOUR = [
    *ONE,
    Bucket("global", "month:2026-12", Decimal(10**6), END),
    Bucket("caller:ci", "day:2026-12-02", Decimal(10**6), END),
    Bucket("model:openai/*", "month:2026-12", Decimal(10**6), END),
]
HOLD, COST = Decimal("0.0042"), Decimal("0.0013")


@contextlib.contextmanager
def local_redis() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH (make test installs it), or pass --url")
    folder = Path(tempfile.mkdtemp(prefix="rt-bench-", dir="/tmp"))
    sock = folder / "redis.sock"
    args = [binary, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no", "--dir", str(folder)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    try:
        for _ in range(500):
            if sock.exists():
                break
            time.sleep(0.01)
        yield f"unix://{sock}"
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def reserve_settle(ledger: BudgetLedger, buckets: list[Bucket]) -> Callable[[], Awaitable[object]]:
    async def step() -> None:
        now = time.time()
        held = await ledger.reserve(buckets, HOLD, now=now, expires_at=now + 900)
        assert isinstance(held, Reservation)
        await ledger.settle(held, COST)

    return step


async def concurrent(name: str, rounds: int, step: Callable[[], Awaitable[object]], width: int = 32) -> None:
    samples = []
    for _ in range(max(rounds // width, 10)):
        started = time.perf_counter()
        await asyncio.gather(*(step() for _ in range(width)))
        samples.append((time.perf_counter() - started) * 1e6 / width)
    p50, p99 = percentiles(samples)
    print(f"{name:<62} p50 {p50:9.1f} µs   p99 {p99:9.1f} µs")


async def main(rounds: int, url: str) -> None:
    redis = RedisState(StateSettings(backend="redis", url=url, key_prefix=f"bench:{time.time_ns()}:"))
    folder = Path(tempfile.mkdtemp(prefix="rt-bench-"))
    ledgers: dict[str, BudgetLedger] = {
        "memory": MemoryBudgetLedger(),
        "sqlite": SqliteBudgetLedger(folder / "budget.sqlite3"),
        "redis": RedisBudgetLedger(redis, reservation_ttl_s=900),
    }
    print("-- budget: reserve + settle")
    for label, buckets in (("1 bucket", ONE), ("4 buckets", FOUR)):
        for kind, ledger in ledgers.items():
            await timed(f"{kind:<7} {label}", rounds, reserve_settle(ledger, buckets))
    for kind, ledger in ledgers.items():
        await concurrent(f"{kind:<7} 4 buckets, 32 calls at once (per call)", rounds, reserve_settle(ledger, FOUR))

    print("-- rate limits")
    rates: dict[str, RateCounter] = {"memory": MemoryRates(), "redis": RedisRates(redis)}
    for kind, counter in rates.items():
        # A limit far above the rounds: every admit passes, as most do.
        await timed(f"{kind:<7} admit (rpm + tpm)", rounds, lambda c=counter: c.admit("ci", rpm=10**9, tpm=10**12))
        await timed(f"{kind:<7} record tokens", rounds, lambda c=counter: c.record_tokens("ci", 120))

    print("-- response cache")
    caches: dict[str, ResponseCache] = {
        "memory": MemoryResponseCache(ttl_s=3600, max_bytes=64 << 20),
        "redis": RedisResponseCache(redis, ttl_s=3600, max_bytes=64 << 20),
    }
    value = bytes(1024)
    keys = [f"{i:064x}" for i in range(32)]
    for kind, cache in caches.items():
        await cache.put_many([(k, value) for k in keys])
        await timed(f"{kind:<7} get 1 (hit, 1 KiB)", rounds, lambda c=cache: c.get_many(keys[:1]))
        await timed(f"{kind:<7} get 32 (hits, 1 KiB each)", rounds, lambda c=cache: c.get_many(keys))
        await timed(f"{kind:<7} put 1 (1 KiB)", rounds, lambda c=cache: c.put_many([(keys[0], value)]))
    for ledger in ledgers.values():
        await ledger.close()
    await redis.close()
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--url", default="", help="an existing Redis (default: start one on a Unix socket)")
    options = parser.parse_args()
    if options.url:
        asyncio.run(main(options.rounds, options.url))
    else:
        with local_redis() as started:
            asyncio.run(main(options.rounds, started))
