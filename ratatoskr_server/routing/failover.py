"""Streaming failover: a stream that breaks mid-answer continues on the route's next candidate.

Before its first content a failed stream is retried or falls back invisibly (``routing.commit``);
after it the caller holds part of the answer, and starting over would show it twice.  Instead the
gateway keeps the prompt and the exact text sent so far and asks the next candidate to continue
it, the way that candidate can (``providers/continuation.py``: a prefill of its own turn, or a
request to continue); the caller reads one stream, with a ``Failover`` event at the seam, and the
overlap the new leg repeats is dropped (``routing.seam``).

It is not attempted, and the stream fails with the upstream's own status, when the failure is not
transient, the partial answer holds a tool call or reasoning (neither can be handed to another
model as its own words: arguments cut mid-JSON, reasoning signed by its provider), the request
opted out (``ChatOptions.stream_failover = false``) or ``failover.enabled`` is off, no later
candidate can continue (``failover.continuation``: "none"), or the deadline has passed.

Each leg runs the stages below the walk on its own (budget, context fit, template, retry, breaker),
so the budget reserves and settles each leg: the broken one for the prompt and the output it
streamed, the new one for what it reports.  The caller's usage covers both: the last leg's usage
event carries the sum (a leg cut before reporting counts its text, estimated).  A continuation is
never cached (it is the rest of an answer, not an answer).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace

from ratatoskr_client.errors import RatatoskrError
from ratatoskr_client.types import (
    ChatEvent,
    ContentDelta,
    Done,
    Failover,
    ReasoningDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
    UsageEvent,
)
from ratatoskr_server.config import FailoverSettings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import Call, Candidate, ChatInput, Continuation
from ratatoskr_server.pipeline.chain import NextStream
from ratatoskr_server.policy.templates.render import estimate_tokens
from ratatoskr_server.providers.capabilities import Capability, as_continuing
from ratatoskr_server.providers.continuation import NONE, PREFILL
from ratatoskr_server.providers.errors import transient
from ratatoskr_server.routing.commit import opening
from ratatoskr_server.routing.seam import Seam

log = logging.getLogger(__name__)

#: (candidate, error, ctx): what the walk reports when it leaves a candidate behind.
MovedOn = Callable[[Candidate, RatatoskrError, RequestContext], None]
#: Candidates whose continuation mode was looked up; names come from configuration, so few.
_MAX_REMEMBERED = 1024


def _sum(a: Usage, b: Usage) -> Usage:
    return Usage(
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
        total_tokens=a.total_tokens + b.total_tokens,
        cached_tokens=a.cached_tokens + b.cached_tokens,
        reasoning_tokens=a.reasoning_tokens + b.reasoning_tokens,
        cost_usd=a.cost_usd + b.cost_usd,
    )


@dataclass(slots=True)
class _Answer:
    """What the caller has been sent so far, across legs, and what the current leg reported."""

    #: Answer text sent, as pieces (joined only when a leg breaks).
    pieces: list[str]
    #: Where the current leg's pieces start.
    leg_start: int = 0
    #: What was sent that another model cannot continue ("a tool call", "reasoning"); "" : nothing.
    unportable: str = ""
    leg_usage: Usage | None = None
    #: The legs before the current one, usage summed (a leg without a report counts its text).
    earlier: Usage | None = None

    def see(self, event: ChatEvent) -> None:
        if isinstance(event, ContentDelta):
            self.pieces.append(event.text)
        elif isinstance(event, UsageEvent):
            self.leg_usage = event.usage
        elif isinstance(event, ToolCallStart | ToolCallDelta | ToolCallEnd):
            self.unportable = self.unportable or "a tool call"
        elif isinstance(event, ReasoningDelta) and event.text:
            self.unportable = self.unportable or "reasoning"

    def _leg(self, usage: Usage | None) -> Usage:
        if usage is not None:
            return usage
        tokens = estimate_tokens("".join(self.pieces[self.leg_start :]))
        return Usage(completion_tokens=tokens, total_tokens=tokens)

    def close_leg(self) -> None:
        """The current leg broke: its usage (reported, else its text estimated) joins the earlier legs'."""
        used = self._leg(self.leg_usage)
        self.earlier = used if self.earlier is None else _sum(self.earlier, used)
        self.leg_start = len(self.pieces)
        self.leg_usage = None

    def combined(self, usage: Usage | None) -> Usage:
        """The usage of every leg, the current one's ``usage`` (else its text estimated) included."""
        assert self.earlier is not None
        return _sum(self.earlier, self._leg(usage))


class _Relay:
    """One leg's events on their way to the caller; after a failover, through the seam and with usage summed."""

    __slots__ = ("_answer", "_resumed", "_seam")

    def __init__(self, answer: _Answer) -> None:
        self._answer = answer
        self._seam: Seam | None = None
        self._resumed = False

    def resumed(self, seam: Seam) -> None:
        self._seam, self._resumed = seam, True

    def through(self, event: ChatEvent) -> tuple[ChatEvent, ...]:
        """The events to send for ``event`` (none while the seam is undecided)."""
        answer = self._answer
        if not self._resumed:
            answer.see(event)
            return (event,)
        out: tuple[ChatEvent, ...] = ()
        seam = self._seam
        if seam is not None:
            if isinstance(event, ContentDelta):
                rest = seam.feed(event.text)
                if rest is None:
                    return ()
                self._seam = None
                return self._text(rest)
            self._seam = None
            out = self._text(seam.flush())
        answer.see(event)
        if isinstance(event, UsageEvent):
            return (*out, UsageEvent(answer.combined(event.usage)))
        if isinstance(event, Done):
            usage = answer.combined(answer.leg_usage)
            timing = replace(event.timing, input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens)
            summed = replace(event, timing=timing)
            # A leg that reported no usage still gets the sum of the legs before it, and its own text.
            return (*out, summed) if answer.leg_usage is not None else (*out, UsageEvent(usage), summed)
        return (*out, event)

    def end(self) -> tuple[ChatEvent, ...]:
        """What the seam still holds when a leg ends without Done."""
        seam, self._seam = self._seam, None
        return () if seam is None else self._text(seam.flush())

    def _text(self, text: str) -> tuple[ChatEvent, ...]:
        if not text:
            return ()
        delta = ContentDelta(text)
        self._answer.see(delta)
        return (delta,)


class StreamFailover:
    """Decides whether and how a broken stream resumes, and walks a route's candidates doing it."""

    def __init__(self, settings: FailoverSettings) -> None:
        self.settings = settings
        #: Glob entries of failover.continuation, most specific (longest) first.
        self._globs = sorted(
            ((k, v) for k, v in settings.continuation.items() if "/" in k), key=lambda item: -len(item[0])
        )
        self._modes: dict[str, str] = {}

    def applies(self, call: Call) -> bool:
        """Whether a stream of ``call`` may resume mid-answer at all."""
        if not self.settings.enabled or call.task is not Capability.CHAT or not isinstance(call.payload, ChatInput):
            return False
        return call.options is None or call.options.stream_failover is not False

    def mode(self, candidate: Candidate) -> str:
        """How ``candidate`` continues: the configuration's word for it, else its provider's default."""
        key = candidate.id
        known = self._modes.get(key)
        if known is not None:
            return known
        mode = self._configured(candidate)
        if mode is None:
            continuer = as_continuing(candidate.provider)
            mode = NONE if continuer is None else continuer.continuation_mode(candidate.model)
        if len(self._modes) >= _MAX_REMEMBERED:
            self._modes.clear()
        self._modes[key] = mode
        return mode

    def _configured(self, candidate: Candidate) -> str | None:
        table = self.settings.continuation
        exact = table.get(candidate.id)
        if exact is not None:
            return exact
        for pattern, mode in self._globs:
            if fnmatch.fnmatchcase(candidate.id, pattern):
                return mode
        return table.get(candidate.provider.name)

    def _resumable(
        self, err: RatatoskrError, answer: _Answer, rest: Sequence[Candidate], ctx: RequestContext
    ) -> str | None:
        """Why the broken stream cannot resume (None: it can)."""
        if not transient(err):
            return "the failure is not transient"
        if answer.unportable:
            return f"the partial answer holds {answer.unportable}, which another model cannot continue"
        if ctx.remaining() == 0:
            return "the deadline has passed"
        if not any(self.mode(c) != NONE for c in rest):
            return "no later candidate can continue an answer (failover.continuation)"
        return None

    async def walk(
        self,
        call: Call,
        ctx: RequestContext,
        next: NextStream,
        candidates: Sequence[Candidate],
        moved_on: MovedOn,
        falls_back: Callable[[RatatoskrError], bool],
    ) -> AsyncIterator[ChatEvent]:
        """The route's stream: the fallback walk, plus resuming on the next candidate after content."""
        answer = _Answer(pieces=[])
        cut: RatatoskrError | None = None  # the failure that broke the answer, once content was sent
        broken: Candidate | None = None
        for i, candidate in enumerate(candidates):
            last = i == len(candidates) - 1
            mode = ""
            if cut is None:
                leg = call.but(target=candidate)
            else:
                mode = self.mode(candidate)
                if mode == NONE:
                    continue
                leg = call.but(target=candidate, continuation=Continuation("".join(answer.pieces), mode))
            events = next(leg, ctx)
            async with aclosing(events):  # type: ignore[type-var]
                try:
                    held = await opening(events)
                except RatatoskrError as err:
                    if cut is None:
                        if last or not falls_back(err) or ctx.remaining() == 0:
                            raise
                        moved_on(candidate, err, ctx)
                        continue
                    # A candidate asked to continue failed before it answered: the next may still.
                    if not falls_back(err) or ctx.remaining() == 0:
                        raise cut from err
                    moved_on(candidate, err, ctx)
                    continue
                relay = _Relay(answer)
                if cut is not None and broken is not None:
                    at = sum(len(p) for p in answer.pieces)
                    seam_event = Failover(broken.id, candidate.id, at, reason=cut.message)
                    ctx.note_resumed(seam_event)
                    yield seam_event
                    limit = self.settings.max_overlap_chars
                    relay.resumed(Seam("".join(answer.pieces), limit, whitespace_only=mode == PREFILL))
                try:
                    for event in held:
                        for out in relay.through(event):
                            yield out
                    async for event in events:
                        for out in relay.through(event):
                            yield out
                    for out in relay.end():
                        yield out
                    return
                except RatatoskrError as err:
                    if not answer.pieces:
                        raise  # nothing of an answer was sent (a tool call or reasoning only)
                    why = self._resumable(err, answer, candidates[i + 1 :], ctx)
                    if why is not None:
                        log.info(
                            "stream broke mid-answer; not resumed",
                            extra={"request_id": ctx.request_id, "candidate": candidate.id, "why": why},
                        )
                        if not transient(err):
                            raise
                        # The upstream's own status, and why no other candidate took the answer over.
                        raise type(err)(f"{err.message} (not resumed: {why})", retry_after_s=err.retry_after_s) from err
                    answer.close_leg()
                    cut, broken = err, candidate
                    moved_on(candidate, err, ctx)
        if cut is not None:
            raise cut
        raise AssertionError("a route with candidates neither answered nor failed")
