"""Dynamic micro-batching for one model, in the spirit of TEI and Infinity.

Concurrent requests are split into single inputs and queued; one worker per
model takes as many as fit a batch (``max_batch_size`` rows and
``max_batch_tokens`` padded tokens), runs them in the inference executor, and
hands each row back to its request.  While a batch runs, new arrivals queue
and form the next one, so a busy model runs full batches without waiting;
an idle one waits at most ``max_wait_ms`` for company.

A request's own inputs are queued sorted by length, so a big client batch is
cut into slices of similar length with little padding; it is split, never
refused for its size.  Batches take inputs round-robin across the waiting
requests, so a single-text call is not stuck behind a 2,048-text one: it rides
in the next batch.  The queue is bounded in tokens (what it costs to work
through) and in requests (RESOURCE_EXHAUSTED beyond either).  Inputs of a
request that was cancelled or whose deadline passed are dropped before they
reach the model.  A batch whose output does not have one row per input fails
every request in it, visibly; nothing waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from opentelemetry.trace import SpanContext
from tokenizers import Encoding

from ratatoskr_client.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    RatatoskrError,
    ResourceExhausted,
    Unavailable,
)
from ratatoskr_server.telemetry.pool import PoolTelemetry

log = logging.getLogger(__name__)

Rows = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_batch_size: int = 32
    max_batch_tokens: int = 16384
    max_wait_ms: float = 1.0
    max_queue: int = 1024
    #: Tokens waiting (padded widths summed) before RESOURCE_EXHAUSTED.
    max_queue_tokens: int = 1 << 20
    #: Batches of this model running at once (each on its own executor thread).
    concurrency: int = 1


@dataclass(slots=True)
class BatchStats:
    """Counters the tests and ``Admin`` read: how much merging and dropping really happened."""

    runs: int = 0
    rows_run: int = 0
    rows_dropped: int = 0
    largest_batch: int = 0


@dataclass(eq=False, slots=True)
class BatchedOutput:
    rows: Rows
    queue_ms: float
    inference_ms: float


@dataclass(eq=False, slots=True)
class _Item:
    request: _Request
    index: int
    encoding: Encoding
    width: int


@dataclass(eq=False, slots=True)
class _Request:
    future: asyncio.Future[BatchedOutput]
    size: int
    deadline: float | None
    submitted: float
    remaining: int
    #: Inputs not yet taken into a batch, shortest first.
    items: deque[_Item] = field(default_factory=deque)
    rows: Rows | None = None
    first_run: float | None = None
    inference_s: float = 0.0
    #: The submitting request's span, for the batches it rides in to link to (tracing on only).
    link: SpanContext | None = None

    def dead(self, now: float) -> bool:
        return self.future.done() or (self.deadline is not None and now > self.deadline)


@dataclass(eq=False)
class MicroBatcher:
    name: str
    run_batch: Callable[[list[Encoding]], Rows]
    executor: Executor
    limits: BatchLimits
    #: Graphs with a fixed sequence length cost that many tokens per row, whatever the input.
    fixed_width: int | None = None
    stats: BatchStats = field(default_factory=BatchStats)
    #: Queue depth, batch sizes and batch spans (set by the pool; None: not reported).
    telemetry: PoolTelemetry | None = None

    def __post_init__(self) -> None:
        #: Requests with inputs still waiting, in arrival order; batches take from them in turn.
        self._waiting: deque[_Request] = deque()
        self._queued_inputs = 0
        self._queued_tokens = 0
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(self.limits.concurrency)
        self._running: set[asyncio.Task[None]] = set()

    @property
    def queued_requests(self) -> int:
        return len(self._waiting)

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"batcher:{self.name}")

    async def stop(self) -> None:
        """Cancel the worker and the running batches, fail every queued request, wait for the tasks.

        Queued requests are failed before the wait, and the wait is asyncio.wait (which never
        raises for the tasks it waits on), so a caller cancelled while stopping, such as the idle
        reaper when the pool closes, leaves no request waiting and keeps its own cancellation.
        """
        tasks = [t for t in (self._worker, *self._running) if t is not None]
        self._worker = None
        for task in tasks:
            task.cancel()
        while self._waiting:
            request = self._waiting.popleft()
            self._forget(request)
            self._fail(request, Unavailable(f"model '{self.name}' was unloaded"))
        if tasks:
            await asyncio.wait(tasks)

    async def submit(self, encodings: Sequence[Encoding], deadline: float | None = None) -> BatchedOutput:
        """Rows for ``encodings`` in their order, computed in whatever batches the queue forms."""
        n = len(encodings)
        if n == 0:
            return BatchedOutput(rows=np.empty((0, 0), dtype=np.float32), queue_ms=0.0, inference_ms=0.0)
        widths = [self.fixed_width or len(e.ids) for e in encodings]
        tokens = sum(widths)
        if len(self._waiting) >= self.limits.max_queue:
            raise ResourceExhausted(
                f"model '{self.name}' has {len(self._waiting)} requests queued, its limit (max_queue); retry shortly",
                retry_after_s=1.0,
            )
        if self._queued_tokens and self._queued_tokens + tokens > self.limits.max_queue_tokens:
            raise ResourceExhausted(
                f"model '{self.name}' has {self._queued_tokens} tokens queued; {tokens} more would pass its limit "
                f"(max_queue_tokens = {self.limits.max_queue_tokens}); retry shortly",
                retry_after_s=1.0,
            )
        loop = asyncio.get_running_loop()
        request = _Request(loop.create_future(), n, deadline, time.perf_counter(), remaining=n)
        for i in sorted(range(n), key=lambda i: widths[i]):
            request.items.append(_Item(request, i, encodings[i], widths[i]))
        self._waiting.append(request)
        if self.telemetry is not None:
            request.link = self.telemetry.link()
            self.telemetry.queue_depth(self.name, len(self._waiting))
        self._queued_inputs += n
        self._queued_tokens += tokens
        self._wakeup.set()
        # Cancelling the caller cancels this future, which marks the request dead for the worker.
        return await request.future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            while not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            if not self._running:  # only an idle model waits for company (see the module docstring)
                await self._gather_company(loop)
            # Share the queue among the slots free now (this one included): a lone big request
            # spreads over every idle slot, while under load each batch takes all it may.
            free = self.limits.concurrency - len(self._running)
            share = -(-self._queued_inputs // max(free, 1))
            batch = self._take(time.monotonic(), min(self.limits.max_batch_size, max(share, 1)))
            if self.telemetry is not None:
                self.telemetry.queue_depth(self.name, len(self._waiting))
            if not batch:
                self._slots.release()
                continue
            task = loop.create_task(self._run(loop, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        """One batch through the model; its slot is free for the next batch when this ends."""
        try:
            started = time.perf_counter()
            try:
                if self.telemetry is None:
                    rows = await loop.run_in_executor(self.executor, self.run_batch, [it.encoding for it in batch])
                else:
                    tokens = max(it.width for it in batch) * len(batch)
                    links = [it.request.link for it in batch]
                    with self.telemetry.batch(self.name, len(batch), tokens, links):
                        rows = await loop.run_in_executor(self.executor, self.run_batch, [it.encoding for it in batch])
            except asyncio.CancelledError:
                for item in batch:
                    self._fail(item.request, Unavailable(f"model '{self.name}' was unloaded"))
                raise
            except RatatoskrError as err:
                self._fail_batch(batch, err)
                return
            except Exception as err:
                log.exception("inference failed", extra={"model": self.name})
                self._fail_batch(batch, Internal(f"inference failed on model '{self.name}': {err}"))
                return
            if rows.ndim != 2 or rows.shape[0] != len(batch):
                self._fail_batch(
                    batch,
                    FailedPrecondition(
                        f"model '{self.name}' returned output of shape {list(rows.shape)} for a batch of "
                        f"{len(batch)} inputs; its graph and manifest.json disagree"
                    ),
                )
                return
            try:
                self._deliver(batch, rows, started, time.perf_counter())
            except Exception as err:  # a caller must never wait for rows that will not come
                log.exception("delivering a batch failed", extra={"model": self.name})
                self._fail_batch(batch, Internal(f"inference failed on model '{self.name}': {err}"))
        finally:
            # Leave the running set before freeing the slot: the worker wakes on the slot and
            # counts the running batches to share the queue, and a finished batch still in the
            # set (its done callback not yet run) would make it pack one request's inputs into
            # fewer, wider batches than the idle slots allow.
            current = asyncio.current_task()
            if current is not None:
                self._running.discard(current)
            self._slots.release()

    async def _gather_company(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait up to max_wait_ms for more inputs when the queue cannot fill a batch yet."""
        wait_until = loop.time() + self.limits.max_wait_ms / 1000
        while self._queued_inputs < self.limits.max_batch_size:
            remaining = wait_until - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self, now: float, limit: int) -> list[_Item]:
        """Up to ``limit`` inputs within the token budget, one from each waiting request in turn."""
        batch: list[_Item] = []
        widest = 0
        full = False
        while self._waiting and not full and len(batch) < limit:
            for request in list(self._waiting):
                if len(batch) >= limit:
                    break
                if request.dead(now):
                    self.stats.rows_dropped += len(request.items)
                    self._forget(request)
                    self._fail(request, DeadlineExceeded("the request's deadline passed while it waited for the model"))
                    continue
                item = request.items[0]
                width = max(widest, item.width)
                if batch and width * (len(batch) + 1) > self.limits.max_batch_tokens:
                    full = True
                    break
                request.items.popleft()
                self._queued_inputs -= 1
                self._queued_tokens -= item.width
                if not request.items:
                    self._waiting.remove(request)
                batch.append(item)
                widest = width
        return batch

    def _forget(self, request: _Request) -> None:
        """Take a request's waiting inputs out of the queue and its counters."""
        self._queued_inputs -= len(request.items)
        self._queued_tokens -= sum(item.width for item in request.items)
        request.items.clear()
        with contextlib.suppress(ValueError):
            self._waiting.remove(request)

    def _deliver(self, batch: list[_Item], rows: Rows, started: float, finished: float) -> None:
        self.stats.runs += 1
        self.stats.rows_run += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        touched: set[int] = set()
        for item, row in zip(batch, rows, strict=True):
            request = item.request
            if request.future.done():
                continue
            if id(request) not in touched:
                touched.add(id(request))
                request.inference_s += finished - started
                request.first_run = request.first_run or started
            if request.rows is None:
                request.rows = np.empty((request.size, rows.shape[1]), dtype=np.float32)
            request.rows[item.index] = row
            request.remaining -= 1
            if request.remaining == 0:
                request.future.set_result(
                    BatchedOutput(
                        rows=request.rows,
                        queue_ms=((request.first_run or started) - request.submitted) * 1000,
                        inference_ms=request.inference_s * 1000,
                    )
                )

    def _fail_batch(self, batch: list[_Item], err: RatatoskrError) -> None:
        for item in batch:
            self._fail(item.request, err)

    @staticmethod
    def _fail(request: _Request, err: RatatoskrError) -> None:
        if not request.future.done():
            request.future.set_exception(err)
