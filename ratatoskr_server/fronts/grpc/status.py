"""The gRPC side of a request: its context from the call, its outcome as status and trailing metadata.

Domain errors carry a ``code`` that is a grpc.StatusCode name (the table lives in
``ratatoskr_client.errors``, shared with the client that maps statuses back); this module is the one
place that turns one into an abort.  Notes and the request id travel in trailing metadata, which
gRPC sends with the status on success and failure alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import grpc
import grpc.aio

from ratatoskr_client.client import (
    BUDGET_WARNING_KEY,
    CACHE_KEY,
    DROPPED_PARAMETERS_KEY,
    FAILED_OVER_KEY,
    FAILOVER_KEY,
    PRIVACY_TIER_KEY,
    REQUEST_ID_KEY,
    RETRIES_KEY,
    RETRY_AFTER_KEY,
    SPILLED_KEY,
    TRUNCATED_KEY,
)
from ratatoskr_client.errors import InvalidArgument, RatatoskrError
from ratatoskr_client.types import PrivacyTier
from ratatoskr_server.context import RequestContext
from ratatoskr_server.edge import MAX_MESSAGE_CHARS, Edge, clip
from ratatoskr_server.fronts.grpc.auth import Caller, Guard
from ratatoskr_server.telemetry.tracing import trace_carrier

Context = grpc.aio.ServicerContext[object, object]
#: The gateway's own milliseconds in the call (total minus the wait on the model or upstream).
OVERHEAD_KEY = "x-ratatoskr-overhead-ms"
T = TypeVar("T")


@dataclass(slots=True)
class Front:
    """What every gRPC call passes through: the transport-neutral edge, then this front's guard
    (keys, scopes, rates), which the daemon replaces on reload."""

    edge: Edge
    guard: Guard


async def _authorize(guard: Guard, rpc: str, context: Context, ctx: RequestContext) -> Caller | None:
    return await guard.admit(rpc, context.peer(), context.invocation_metadata(), ctx)


def request_context(context: Context) -> RequestContext:
    """The request as the core sees it: the caller's x-request-id when sane, the call's deadline,
    its privacy ask (which can only tighten the tier)."""
    given = None
    asks: list[str] = []
    cache: bool | None = None
    metadata = context.invocation_metadata() or ()
    for key, value in metadata:
        if key == REQUEST_ID_KEY and isinstance(value, str):
            given = value if given is None else given
        elif key == PRIVACY_TIER_KEY and isinstance(value, str):
            asks.append(value)  # sent more than once: the strictest counts
        elif key == CACHE_KEY and isinstance(value, str):
            cache = cache_ask(value)
    ctx = RequestContext.start(timeout=context.time_remaining(), request_id=given)
    ctx.cache = cache
    ctx.trace_carrier = trace_carrier(metadata)
    for ask in asks:
        ctx.tighten_privacy(privacy_tier(ask))
    return ctx


def privacy_tier(value: str) -> PrivacyTier:
    """A request's ``x-ratatoskr-privacy-tier``; an unknown one is refused, never ignored (ignoring
    it would loosen what the caller asked for)."""
    try:
        return PrivacyTier(value.strip().lower())
    except ValueError:
        known = ", ".join(t.value for t in PrivacyTier)
        raise InvalidArgument(f"{PRIVACY_TIER_KEY}: unknown privacy tier {value[:40]!r} (one of {known})") from None


def cache_ask(value: str) -> bool:
    """A request's ``x-ratatoskr-cache``: "on" or "off"; anything else is refused, never guessed."""
    asked = value.strip().lower()
    if asked not in ("on", "off"):
        raise InvalidArgument(f"{CACHE_KEY}: {value[:40]!r} is neither 'on' nor 'off'")
    return asked == "on"


async def _request_context(context: Context) -> RequestContext:
    """``request_context``, or the call aborted with the status of what was wrong in its metadata."""
    try:
        return request_context(context)
    except RatatoskrError as err:
        await context.abort(grpc.StatusCode[err.code], clip(err.message, MAX_MESSAGE_CHARS))
        raise AssertionError("unreachable") from None  # abort() raises


def trailing_metadata(ctx: RequestContext, err: RatatoskrError | None = None) -> tuple[tuple[str, str], ...]:
    trailing = [(REQUEST_ID_KEY, ctx.request_id)]
    notes = ctx.notes
    if notes.dropped_parameters:
        trailing.append((DROPPED_PARAMETERS_KEY, ",".join(notes.dropped_parameters)))
    if notes.truncation is not None:
        trailing.append((TRUNCATED_KEY, notes.truncation.summary()))
    if notes.budget_warning:  # metadata values are ASCII: anything else is escaped, not dropped
        trailing.append((BUDGET_WARNING_KEY, notes.budget_warning.encode("ascii", "backslashreplace").decode()))
    if notes.cache_hits:
        trailing.append((CACHE_KEY, str(notes.cache_hits)))
    if notes.retries:
        trailing.append((RETRIES_KEY, str(notes.retries)))
    if notes.failed_over:  # candidate ids are caller-named model strings: ASCII-escaped like the warning
        trailing.append((FAILED_OVER_KEY, ",".join(notes.failed_over).encode("ascii", "backslashreplace").decode()))
    if notes.failovers:
        resumed = ",".join(f"{f.from_candidate}->{f.to_candidate}@{f.at_char}" for f in notes.failovers)
        trailing.append((FAILOVER_KEY, resumed.encode("ascii", "backslashreplace").decode()))
    if notes.spilled_from:
        trailing.append((SPILLED_KEY, notes.spilled_from.encode("ascii", "backslashreplace").decode()))
    if err is not None and err.retry_after_s is not None:
        trailing.append((RETRY_AFTER_KEY, f"{err.retry_after_s:g}"))
    overhead = ctx.answered.overhead_ms
    if overhead is not None:
        trailing.append((OVERHEAD_KEY, f"{overhead:.3f}"))
    return tuple(trailing)


async def abort(context: Context, ctx: RequestContext, err: RatatoskrError) -> NoReturn:
    context.set_trailing_metadata(trailing_metadata(ctx, err))
    await context.abort(grpc.StatusCode[err.code], clip(err.message, MAX_MESSAGE_CHARS))
    raise AssertionError("unreachable")  # abort() raises


async def unary(
    front: Front,
    rpc: str,
    context: Context,
    handler: Callable[[RequestContext], Awaitable[T]],
    *,
    model: str = "",
    limited: bool = True,
) -> T:
    """One unary RPC through the edge: the answer with its trailing metadata, or an abort."""
    ctx = await _request_context(context)
    guard = front.guard  # one guard for the whole call, should a reload replace it meanwhile
    try:
        async with front.edge.admit(rpc, ctx, model=model, limited=limited):
            caller = await _authorize(guard, rpc, context, ctx)
            result = await handler(ctx)
            await guard.settle(caller, result)
    except RatatoskrError as err:
        await abort(context, ctx, err)
    context.set_trailing_metadata(trailing_metadata(ctx))
    return result


async def stream(
    front: Front,
    rpc: str,
    context: Context,
    events: Callable[[RequestContext], AsyncIterator[T]],
    *,
    model: str = "",
) -> AsyncIterator[T]:
    """One server-streaming RPC through the edge; a failure after the first message still aborts."""
    ctx = await _request_context(context)
    guard = front.guard  # one guard for the whole call, should a reload replace it meanwhile

    async def guarded() -> AsyncIterator[T]:
        caller = await _authorize(guard, rpc, context, ctx)
        async for item in events(ctx):
            await guard.settle(caller, item)
            yield item

    try:
        async for item in front.edge.stream(rpc, ctx, guarded(), model=model):
            yield item
    except RatatoskrError as err:
        await abort(context, ctx, err)
    context.set_trailing_metadata(trailing_metadata(ctx))
