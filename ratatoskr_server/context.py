"""``RequestContext``: one request as every layer below the fronts sees it.

Each way in (the gRPC front, the embedded gateway, later the HTTP front) makes one at arrival: the
request id, an absolute deadline, who is calling, and the notes the stages leave on the way.  An
absolute deadline instead of a ``timeout`` float per hop means a retry, a fallback or a queue wait
spends the same budget rather than restarting it; notes travel with the request instead of through
a context variable, so a stage and the front that reports them need not share a task.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from ratatoskr_client.errors import DeadlineExceeded
from ratatoskr_client.types import ChatOptions, Failover, Notes, PrivacyTier, Truncation

Clock = Callable[[], float]
_NO_NOTES = Notes()

#: Request ids: a random per-process prefix and a counter, unique without a syscall per call.
_ID_PREFIX = uuid.uuid4().hex[:12]
_ids = itertools.count(1)
#: Longest request id taken from a caller; longer ones are replaced by a fresh id.
MAX_REQUEST_ID_CHARS = 128


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):08x}"


def accepted_request_id(given: str | None) -> str:
    """The caller's id when it is a sane one (non-empty, short, printable), else a fresh one."""
    if given and len(given) <= MAX_REQUEST_ID_CHARS and given.isprintable():
        return given
    return new_request_id()


@dataclass(slots=True)
class Answered:
    """What the call's answer says about itself, written by the stages that learn it (dispatch,
    budget) and read once by the edge for the span, the metrics and the log line: one record, so
    none of those needs to reach into the pipeline."""

    #: The provider that answered (its configured name) and its kind (the backend: local, openai…).
    provider: str = ""
    backend: str = ""
    #: The model asked of the provider, and the one that answered as it names itself.
    request_model: str = ""
    response_model: str = ""
    #: The generation parameters as sent (after presets and the parameter guard).
    options: ChatOptions | None = None
    finish_reason: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    #: Milliseconds from arrival to the first event of a stream; None for unary calls.
    first_event_ms: float | None = None
    #: Seconds spent waiting on providers (the pool or an upstream), summed over attempts: the rest
    #: of the request's time is the gateway's own overhead.
    upstream_s: float = 0.0
    #: USD held before the call and charged after it (None: no budget concerned it).
    budget_reserved_usd: float | None = None
    budget_settled_usd: float | None = None
    #: The gateway's own time (total minus ``upstream_s``), set by the edge when the request ends.
    overhead_ms: float | None = None


@dataclass(slots=True)
class RequestContext:
    request_id: str
    #: When the caller stops waiting, on ``clock``; None means no deadline of its own.
    deadline: float | None = None
    #: Who is calling (a caller key's name once auth exists; "" for the local socket).
    caller: str = ""
    #: The budget scope the caller's key is charged to ("" : the caller's own, or none).
    budget_scope: str = ""
    #: The strictest privacy tier set for this request so far (key ceiling, its own ask); None: no limit yet.
    privacy_tier: PrivacyTier | None = None
    #: The tracing span of this request, when tracing is on.
    span: object | None = None
    #: W3C trace context the caller sent (traceparent, tracestate), read by the tracer when on.
    trace_carrier: dict[str, str] | None = None
    #: What the answer said about itself (provider, tokens, timings), for telemetry.
    answered: Answered = field(default_factory=Answered)
    clock: Clock = time.monotonic
    #: The caller's timeout as given (seconds), for messages; ``deadline`` is what counts.
    timeout: float | None = None
    #: ``time.perf_counter()`` at arrival: every Timing's total is measured from here.
    arrived: float = field(default_factory=time.perf_counter)
    _dropped: list[str] = field(default_factory=list)
    _truncation: Truncation | None = None
    _budget_warning: str = ""
    #: The caller's ask of the response cache (x-ratatoskr-cache): True "on", False "off", None the config's.
    cache: bool | None = None
    _cache_hits: int = 0
    _retries: int = 0
    _failed_over: list[str] = field(default_factory=list)
    _failovers: list[Failover] = field(default_factory=list)
    _spilled_from: str = ""

    @classmethod
    def start(
        cls,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        caller: str = "",
        clock: Clock = time.monotonic,
    ) -> RequestContext:
        """A context for a request arriving now with ``timeout`` seconds to live (0 is already due)."""
        deadline = None if timeout is None else clock() + max(timeout, 0.0)
        return cls(
            request_id=accepted_request_id(request_id),
            deadline=deadline,
            timeout=timeout,
            caller=caller,
            clock=clock,
        )

    def remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), or None without one."""
        return None if self.deadline is None else max(self.deadline - self.clock(), 0.0)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.arrived) * 1000

    # -- notes -------------------------------------------------------------------------------------
    def note_dropped(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self._dropped:
                self._dropped.append(name)

    def tighten_privacy(self, tier: PrivacyTier | None) -> None:
        """Add a limit on where this request's data may go (a key's ceiling, the request's ask):
        the strictest wins, so nothing can loosen what another part set."""
        if tier is not None:
            self.privacy_tier = tier.tightest(self.privacy_tier)

    def note_truncation(self, truncation: Truncation) -> None:
        self._truncation = truncation

    def note_budget_warning(self, warning: str) -> None:
        self._budget_warning = warning

    def note_cache_hits(self, hits: int) -> None:
        self._cache_hits += hits

    def note_retry(self) -> None:
        self._retries += 1

    def note_failover(self, candidate: str) -> None:
        """The route moved past ``candidate`` ("provider/model")."""
        self._failed_over.append(candidate)

    def note_resumed(self, failover: Failover) -> None:
        """A stream that failed mid-answer continued on another candidate (streaming failover)."""
        self._failovers.append(failover)

    @property
    def retries(self) -> int:
        return self._retries

    @property
    def cache_hits(self) -> int:
        return self._cache_hits

    @property
    def fallbacks(self) -> int:
        """Candidates left for the next one (``failed_over``); resumed streams are ``resumes``."""
        return len(self._failed_over)

    @property
    def resumes(self) -> int:
        return len(self._failovers)

    def note_spilled(self, candidate: str) -> None:
        """The route's local ``candidate`` ("provider/model") was at its queue's spill_at: others go first."""
        self._spilled_from = candidate

    @property
    def notes(self) -> Notes:
        if (
            not self._dropped
            and self._truncation is None
            and not self._budget_warning
            and not self._cache_hits
            and not self._retries
            and not self._failed_over
            and not self._failovers
            and not self._spilled_from
        ):
            return _NO_NOTES
        return Notes(
            dropped_parameters=list(self._dropped),
            truncation=self._truncation,
            budget_warning=self._budget_warning,
            cache_hits=self._cache_hits,
            retries=self._retries,
            failed_over=list(self._failed_over),
            failovers=list(self._failovers),
            spilled_from=self._spilled_from,
        )

    # -- deadlines ---------------------------------------------------------------------------------
    def budget(self, cap: float | None = None) -> float | None:
        """Seconds this request may still spend on one step bounded by ``cap`` (e.g. an HTTP total)."""
        left = self.remaining()
        if cap is None:
            return left
        return cap if left is None else min(left, cap)

    def limit(self, cap: float | None = None, cap_name: str = "") -> str:
        """Which limit a step under ``budget(cap)`` runs into, as a caller reads it."""
        left = self.remaining()
        if cap is not None and (left is None or cap <= left):
            return f"{cap_name or 'the limit'} = {cap:g}s"
        assert self.timeout is not None
        return f"the call's timeout of {self.timeout:g}s"

    @asynccontextmanager
    async def bounded(self, failure: str, cap: float | None = None, cap_name: str = "") -> AsyncIterator[None]:
        """Run the body until the deadline (or ``cap`` seconds, whichever is sooner).

        ``failure`` says what did not happen in time ("no answer"); the limit that ran out is added.
        """
        budget = self.budget(cap)
        if budget is None:
            yield
            return
        limit = self.limit(cap, cap_name)
        try:
            async with asyncio.timeout(budget):
                yield
        except TimeoutError:
            raise DeadlineExceeded(f"{failure} within {limit}") from None
