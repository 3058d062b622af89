"""The budget ledger in SQLite: spend survives a restart, and reserves are atomic across processes.

One connection, used only from one dedicated thread (a single-worker executor), so the event loop
never waits on the disk and statements never interleave.  WAL lets readers (``ratatoskr budget``)
run beside the writer.  Every reserve and settle runs inside a ``BEGIN IMMEDIATE`` transaction,
which takes the write lock before reading, so two reserves (of this daemon or another process on
the same file) cannot both see the same room; those that arrive while one transaction runs share
the next (group commit: one thread hop and one commit for all, each in its own savepoint when
there are several, in order), which keeps the latency of many concurrent calls near that of one.  Amounts are integer
nano-dollars: no float ever touches money.

Reservations carry an expiry: a daemon that died before settling leaves rows that stop counting
once they lapse (and are deleted by a later reserve).  A job once submitted runs even if its caller
is cancelled, so a settle is never lost to a client going away; a reserve whose caller went away
is released at once.  Checkpoints (which fsync) run on a connection and thread of their own.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

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

#: Spent and (live) reserved nano-dollars of one bucket, in one statement.
_NUMBERS = """
SELECT (SELECT nanos FROM spend WHERE scope = ?1 AND window = ?2),
       (SELECT COALESCE(SUM(r.nanos), 0) FROM holds h JOIN reservations r ON r.id = h.reservation
        WHERE h.scope = ?1 AND h.window = ?2 AND r.expires_at > ?3)
"""
#: Lapsed reservations are deleted at most this often (they stop counting at once regardless).
_EXPIRE_EVERY_S = 1.0


class SqliteBudgetLedger:
    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0, checkpoint_every: int = 1000) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self.checkpoint_every = checkpoint_every
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ratatoskr-ledger")
        #: Checkpoints copy the WAL into the database (and fsync): on a thread and connection of
        #: their own, so no reserve ever waits for one.
        self._checkpointer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ratatoskr-ledger-ckpt")
        self._db = self._executor.submit(self._open).result()
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._commits = 0
        self._expired_at = float("-inf")  # touched only on the ledger thread

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_s)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
        db.execute("PRAGMA wal_autocheckpoint=0")  # see _checkpoint
        db.executescript(SCHEMA)
        return db

    # -- group commit --------------------------------------------------------------------------------
    # Calls that arrive while a transaction runs wait for the next one and share it: one thread hop
    # and one commit for all of them, each in a savepoint of its own, run one after another, so each
    # sees what the ones before it held (the same atomicity as a transaction each).

    def _submit(self, job: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((job, future))
        if self._flushing is None:
            self._flushing = loop.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                jobs = [job for job, _ in batch]
                try:
                    outcomes = await loop.run_in_executor(self._executor, self._transaction, jobs)
                except asyncio.CancelledError:  # the loop is shutting down
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as err:  # the commit itself failed: none of them happened
                    outcomes = [(False, err)] * len(batch)
                for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self._flushing = None

    def _transaction(self, jobs: list[Callable[[sqlite3.Connection], Any]]) -> list[tuple[bool, Any]]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        outcomes: list[tuple[bool, Any]] = []
        try:
            if len(jobs) == 1:
                # Alone in its transaction, a job needs no savepoint (two statements fewer, the usual
                # case at a low rate): when it fails, the whole transaction is rolled back.
                try:
                    outcomes.append((True, jobs[0](db)))
                except Exception as err:
                    db.execute("ROLLBACK")
                    return [(False, err)]
            else:
                for job in jobs:
                    db.execute("SAVEPOINT job")
                    try:
                        outcomes.append((True, job(db)))
                    except Exception as err:
                        db.execute("ROLLBACK TO job")
                        outcomes.append((False, err))
                    db.execute("RELEASE job")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self._commits += 1
        if self._commits % self.checkpoint_every == 0:
            self._checkpointer.submit(self._checkpoint)
        return outcomes

    def _checkpoint(self) -> None:
        with sqlite3.connect(self.path, timeout=self.busy_timeout_s) as db:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        db.close()

    async def _run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        return await self._submit(job)

    @staticmethod
    def _numbers(db: sqlite3.Connection, bucket: Bucket, now: float) -> tuple[int, int]:
        spent, reserved = db.execute(_NUMBERS, (*bucket.key, now)).fetchone()
        return int(spent or 0), int(reserved)

    async def reserve(
        self, buckets: Sequence[Bucket], amount: Decimal, *, now: float, expires_at: float
    ) -> Reservation | Refusal:
        nanos = to_nanos(amount)

        def body(db: sqlite3.Connection) -> Reservation | Refusal:
            if abs(now - self._expired_at) >= _EXPIRE_EVERY_S:
                self._expire(db, now)
                self._expired_at = now
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

        future = self._submit(body)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The caller went away while its reserve was queued or running: hand back what it held.
            future.add_done_callback(self._release_unwanted)
            raise

    def _release_unwanted(self, future: asyncio.Future[Reservation | Refusal]) -> None:
        if not future.cancelled() and future.exception() is None:
            held = future.result()
            if isinstance(held, Reservation):
                self._submit(self._settle_job(held, Decimal(0)))

    def _settle_job(self, reservation: Reservation, actual: Decimal) -> Callable[[sqlite3.Connection], None]:
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

        return body

    def settle(self, reservation: Reservation, actual: Decimal) -> asyncio.Future[None]:
        return self._submit(self._settle_job(reservation, actual))

    @staticmethod
    def _expire(db: sqlite3.Connection, now: float) -> int:
        db.execute("DELETE FROM holds WHERE reservation IN (SELECT id FROM reservations WHERE expires_at <= ?)", (now,))
        return db.execute("DELETE FROM reservations WHERE expires_at <= ?", (now,)).rowcount

    async def expire(self, now: float) -> int:
        return await self._run(lambda db: self._expire(db, now))

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
        if self._flushing is not None:
            await self._flushing
        await asyncio.get_running_loop().run_in_executor(self._executor, self._db.close)
        self._executor.shutdown(wait=True)
        self._checkpointer.shutdown(wait=True)
