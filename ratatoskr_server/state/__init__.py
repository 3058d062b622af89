"""Shared state behind protocols: budget ledger, rate counters, response cache, breaker state.

Each protocol has a memory implementation (the ledger also a SQLite one) and a Redis one
(``redis_*.py``) that replicas share; ``factory.py`` builds what ``state.backend`` asks for.  The
stages and the front take an implementation as a dependency, so which one is in use is a wiring
decision.
"""
