"""Shared state behind protocols (budget ledger; later rate counters, cache, breaker state).

Each protocol has a memory implementation and a SQLite one, and the scale-out issue adds Redis; the
stages take an implementation as a dependency, so which one is in use is a wiring decision.
"""
