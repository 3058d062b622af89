"""Timing one awaitable step many times, as the in-process stage benches do (context, privacy, budget, cache).

Imported by those scripts as a sibling module (they run as ``.venv/bin/python bench/NAME.py``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) of ``samples``, which are sorted in place."""
    samples.sort()
    return statistics.median(samples), samples[max(int(len(samples) * 0.99) - 1, 0)]


async def timed(name: str, rounds: int, step: Callable[[], Awaitable[object]], warmup: int = 20) -> float:
    """Print the p50 and p99 of ``step`` in µs after ``warmup`` untimed runs; return the p50."""
    for _ in range(warmup):
        await step()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        await step()
        samples.append((time.perf_counter() - started) * 1e6)
    p50, p99 = percentiles(samples)
    print(f"{name:<62} p50 {p50:9.1f} µs   p99 {p99:9.1f} µs")
    return p50
