"""Shared state behind protocols (budget ledger, rate counters; later cache and breaker state).

Each protocol has a memory implementation (and the ledger a SQLite one); the scale-out issue adds
Redis. The stages and the front take an implementation as a dependency, so which one is in use is a
wiring decision.
"""
