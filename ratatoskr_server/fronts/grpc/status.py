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

from ratatoskr_client.client import DROPPED_PARAMETERS_KEY, REQUEST_ID_KEY, RETRY_AFTER_KEY, TRUNCATED_KEY
from ratatoskr_client.errors import RatatoskrError
from ratatoskr_server.context import RequestContext
from ratatoskr_server.edge import MAX_MESSAGE_CHARS, Edge, clip
from ratatoskr_server.fronts.grpc.auth import Caller, Guard

Context = grpc.aio.ServicerContext[object, object]
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
    """The request as the core sees it: the caller's x-request-id when sane, the call's deadline."""
    given = None
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            given = value
            break
    return RequestContext.start(timeout=context.time_remaining(), request_id=given)


def trailing_metadata(ctx: RequestContext, err: RatatoskrError | None = None) -> tuple[tuple[str, str], ...]:
    trailing = [(REQUEST_ID_KEY, ctx.request_id)]
    notes = ctx.notes
    if notes.dropped_parameters:
        trailing.append((DROPPED_PARAMETERS_KEY, ",".join(notes.dropped_parameters)))
    if notes.truncation is not None:
        trailing.append((TRUNCATED_KEY, notes.truncation.summary()))
    if err is not None and err.retry_after_s is not None:
        trailing.append((RETRY_AFTER_KEY, f"{err.retry_after_s:g}"))
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
    ctx = request_context(context)
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
    ctx = request_context(context)
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
