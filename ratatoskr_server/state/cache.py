"""The response cache's store: a protocol any backend meets, and a memory LRU with a TTL and a byte bound.

Values are bytes (the cache stage encodes them), so the byte bound counts what is really held and a
shared backend (Redis, in the scale-out issue) stores the same values.  ``get`` and ``put`` do not
await between their reads and writes, so on one event loop the memory store needs no lock.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

#: What one entry costs beyond its key and value (the dict slot, the tuple, the expiry float):
#: counted so a flood of tiny entries cannot hold far more memory than ``max_bytes`` says.
ENTRY_OVERHEAD = 128


class ResponseCache(Protocol):
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The live value of each key, in order; None for a miss (absent or expired)."""
        ...

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store each value under its key for the store's TTL (replacing what was there)."""
        ...

    async def clear(self) -> None: ...


class MemoryResponseCache:
    """Least recently used entries go first once ``max_bytes`` would be passed; each lives ``ttl_s``.

    ``clock`` is injected (monotonic seconds) so tests can pass time without sleeping.
    """

    def __init__(self, *, ttl_s: float, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.clock = clock
        #: key -> (value, expires_at); order is recency, most recent last.
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _size(key: str, value: bytes) -> int:
        return len(key) + len(value) + ENTRY_OVERHEAD

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = self.clock()
        found: list[bytes | None] = []
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                found.append(None)
            elif entry[1] <= now:
                self._drop(key)
                found.append(None)
            else:
                self._entries.move_to_end(key)
                found.append(entry[0])
        return found

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        expires = self.clock() + self.ttl_s
        for key, value in items:
            size = self._size(key, value)
            if size > self.max_bytes:
                continue  # one answer larger than the whole cache is not kept
            if key in self._entries:
                self._drop(key)
            while self._entries and self.bytes + size > self.max_bytes:
                oldest = next(iter(self._entries))
                self._drop(oldest)
                self.evictions += 1
            self._entries[key] = (value, expires)
            self.bytes += size

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self.bytes -= self._size(key, value)

    async def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
