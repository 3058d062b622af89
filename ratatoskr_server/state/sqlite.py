"""The budget ledger in SQLite: spend survives a restart, and reserves are atomic across processes.

One connection, used only from one dedicated thread (a single-worker executor), so the event loop
never waits on the disk and statements never interleave.  WAL lets readers (``ratatoskr budget``)
run beside the writer; each reserve and each settle is one ``BEGIN IMMEDIATE`` transaction, which
takes the write lock before reading, so two reserves (of this daemon or another process on the
same file) cannot both see the same room.  Amounts are integer nano-dollars: no float ever
touches money.  Reservations carry an expiry; a daemon that died before settling leaves rows that
simply stop counting once they lapse, and are deleted by the next reserve.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

from ratatoskr_server.state.budget import Bucket, BucketState, Refusal, Reservation, from_nanos, to_nanos

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    scope TEXT NOT NULL, window TEXT NOT NULL, nanos INTEGER NOT NULL,
    PRIMARY KEY (scope, window)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (
    id INTEGER PRIMARY KEY, nanos INTEGER NOT NULL, expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_expiry ON reservations (expires_at);
CREATE TABLE IF NOT EXISTS holds (
    reservation INTEGER NOT NULL, scope TEXT NOT NULL, window TEXT NOT NULL,
    PRIMARY KEY (scope, window, reservation)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS holds_reservation ON holds (reservation);
"""

_RESERVED = """
SELECT COALESCE(SUM(r.nanos), 0) FROM holds h JOIN reservations r ON r.id = h.reservation
WHERE h.scope = ? AND h.window = ? AND r.expires_at > ?
"""


class SqliteBudgetLedger:
    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ratatoskr-ledger")
        self._db = self._executor.submit(self._open, busy_timeout_s).result()

    def _open(self, busy_timeout_s: float) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
        db.executescript(SCHEMA)
        return db

    async def _run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, job, self._db)

    @staticmethod
    def _transaction(db: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
        db.execute("BEGIN IMMEDIATE")
        try:
            result = body(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    @staticmethod
    def _numbers(db: sqlite3.Connection, bucket: Bucket, now: float) -> tuple[int, int]:
        row = db.execute("SELECT nanos FROM spend WHERE scope = ? AND window = ?", bucket.key).fetchone()
        reserved = db.execute(_RESERVED, (*bucket.key, now)).fetchone()[0]
        return (row[0] if row else 0), int(reserved)

    async def reserve(
        self, buckets: Sequence[Bucket], amount: Decimal, *, now: float, expires_at: float
    ) -> Reservation | Refusal:
        nanos = to_nanos(amount)

        def body(db: sqlite3.Connection) -> Reservation | Refusal:
            self._expire(db, now)
            levels = []
            for bucket in buckets:
                spent, reserved = self._numbers(db, bucket, now)
                if spent + reserved + nanos > to_nanos(bucket.limit):
                    return Refusal(BucketState(bucket, from_nanos(spent), from_nanos(reserved)), amount)
                levels.append(BucketState(bucket, from_nanos(spent), from_nanos(reserved + nanos)))
            cursor = db.execute("INSERT INTO reservations (nanos, expires_at) VALUES (?, ?)", (nanos, expires_at))
            rid = cursor.lastrowid
            assert rid is not None
            db.executemany(
                "INSERT INTO holds (reservation, scope, window) VALUES (?, ?, ?)",
                [(rid, *b.key) for b in buckets],
            )
            return Reservation(rid, amount, tuple(buckets), tuple(levels))

        return await self._run(lambda db: self._transaction(db, body))

    async def settle(self, reservation: Reservation, actual: Decimal) -> None:
        nanos = to_nanos(actual)

        def body(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM holds WHERE reservation = ?", (reservation.id,))
            db.execute("DELETE FROM reservations WHERE id = ?", (reservation.id,))
            if nanos:
                db.executemany(
                    "INSERT INTO spend (scope, window, nanos) VALUES (?, ?, ?) "
                    "ON CONFLICT (scope, window) DO UPDATE SET nanos = nanos + excluded.nanos",
                    [(*b.key, nanos) for b in reservation.buckets],
                )

        await self._run(lambda db: self._transaction(db, body))

    @staticmethod
    def _expire(db: sqlite3.Connection, now: float) -> int:
        db.execute("DELETE FROM holds WHERE reservation IN (SELECT id FROM reservations WHERE expires_at <= ?)", (now,))
        return db.execute("DELETE FROM reservations WHERE expires_at <= ?", (now,)).rowcount

    async def expire(self, now: float) -> int:
        return await self._run(lambda db: self._transaction(db, lambda d: self._expire(d, now)))

    async def states(self, buckets: Sequence[Bucket], *, now: float) -> list[BucketState]:
        def read(db: sqlite3.Connection) -> list[BucketState]:
            out = []
            for bucket in buckets:
                spent, reserved = self._numbers(db, bucket, now)
                out.append(BucketState(bucket, from_nanos(spent), from_nanos(reserved)))
            return out

        return await self._run(read)

    async def scopes(self, windows: Sequence[str]) -> list[str]:
        marks = ",".join("?" * len(windows))

        def read(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                f"SELECT scope FROM spend WHERE window IN ({marks}) "
                f"UNION SELECT scope FROM holds WHERE window IN ({marks})",
                (*windows, *windows),
            ).fetchall()
            return sorted(r[0] for r in rows)

        return await self._run(read) if windows else []

    async def close(self) -> None:
        await self._run(lambda db: db.close())
        self._executor.shutdown(wait=True)
