"""What every RPC goes through: request id, in-flight limit, status mapping, metrics, one log line.

Errors raised in the core are domain exceptions; their ``code`` (the table in
``ratatoskr_client.errors``) becomes the gRPC status here and nowhere else.
Anything unexpected is logged with its traceback and answered INTERNAL with
the request id, so the caller never sees a Python traceback.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from typing import NoReturn, TypeVar

import grpc
import grpc.aio

from ratatoskr_client.client import DROPPED_PARAMETERS_KEY, REQUEST_ID_KEY, RETRY_AFTER_KEY
from ratatoskr_client.errors import RatatoskrError, Unimplemented
from ratatoskr_server.policy.params import dropped_parameters
from ratatoskr_server.telemetry.metrics import Metrics

log = logging.getLogger("ratatoskr.request")

T = TypeVar("T")


class Edge:
    def __init__(self, metrics: Metrics, max_in_flight: int) -> None:
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    @asynccontextmanager
    async def _guard(
        self, rpc: str, context: grpc.aio.ServicerContext[object, object], model: str, limited: bool
    ) -> AsyncIterator[list[tuple[str, str]]]:
        """Limits, status mapping, metrics and the log line around one RPC, unary or streaming.

        Yields the trailing metadata list, which the body may extend; it is sent with the status.
        """
        request_id = _request_id(context)
        started = time.perf_counter()
        code = "OK"
        counted = False
        trailing: list[tuple[str, str]] = [(REQUEST_ID_KEY, request_id)]
        dropped: list[str] = []
        token = dropped_parameters.set(dropped)
        try:
            if limited:
                if self.in_flight >= self.max_in_flight:
                    code = "RESOURCE_EXHAUSTED"
                    trailing.append((RETRY_AFTER_KEY, "1"))
                    await _abort(
                        context,
                        trailing,
                        code,
                        f"the daemon is at its limit of {self.max_in_flight} requests in flight "
                        "(server.max_in_flight); retry shortly",
                    )
                self.in_flight += 1
                counted = True
                self.metrics.in_flight.inc()
            yield trailing
            if dropped:
                trailing.append((DROPPED_PARAMETERS_KEY, ",".join(dropped)))
            context.set_trailing_metadata(tuple(trailing))
        except RatatoskrError as err:
            code = err.code
            if err.retry_after_s is not None:
                trailing.append((RETRY_AFTER_KEY, f"{err.retry_after_s:g}"))
            await _abort(context, trailing, code, err.message)
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            remaining = context.time_remaining()
            code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            log.exception("unhandled error", extra={"request_id": request_id, "rpc": rpc})
            await _abort(
                context, trailing, code, f"internal error (request id {request_id}); the daemon's log has details"
            )
        finally:
            dropped_parameters.reset(token)
            if counted:
                self.in_flight -= 1
                self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(rpc=rpc, code=code).inc()
            self.metrics.latency.labels(rpc=rpc).observe(elapsed)
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "rpc": rpc,
                    "model": clip(model, MAX_LOGGED_CHARS),
                    "status": code,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )

    async def call(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext[object, object],
        handler: Callable[[], Awaitable[T]],
        *,
        model: str = "",
        limited: bool = True,
    ) -> T:
        """Run ``handler`` as unary RPC ``rpc``; ``limited`` calls count against ``server.max_in_flight``."""
        async with self._guard(rpc, context, model, limited):
            return await handler()
        raise AssertionError("unreachable")  # the guard re-raises or aborts on every failure

    async def stream(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext[object, object],
        events: Callable[[], AsyncIterator[T]],
        *,
        model: str = "",
    ) -> AsyncIterator[T]:
        """Relay a server stream; a failure after the first message still ends the RPC with its status.

        Nothing is buffered here: each message is pulled from the source only after gRPC took the
        previous one, so a slow client slows the upstream read (backpressure), and a cancel closes
        the source at once.
        """
        async with self._guard(rpc, context, model, True):
            source = events()
            async with aclosing(source):  # type: ignore[type-var]
                async for item in source:
                    yield item

    async def unimplemented(
        self, rpc: str, context: grpc.aio.ServicerContext[object, object], what_is_missing: str
    ) -> NoReturn:
        """Answer UNIMPLEMENTED saying what is missing: never a made-up answer."""

        async def fail() -> NoReturn:
            raise Unimplemented(f"{rpc} is not available in this version: {what_is_missing}")

        await self.call(rpc, context, fail, limited=False)
        raise AssertionError("unreachable")  # call() always aborts for a raising handler


#: Request ids: a random per-process prefix and a counter; unique without a syscall per call.
_ID_PREFIX = uuid.uuid4().hex[:12]
_ids = itertools.count(1)


def _request_id(context: grpc.aio.ServicerContext[object, object]) -> str:
    """The caller's x-request-id when it sent a sane one, else a fresh one."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return f"{_ID_PREFIX}{next(_ids):08x}"


#: Longest status message sent: messages quote what the caller sent (a model name, a template), and a
#: status detail beyond the client's metadata limit (8 KiB by default) reaches it as a different error.
MAX_MESSAGE_CHARS = 2000
#: Longest caller-chosen value written into a log line.
MAX_LOGGED_CHARS = 200


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


async def _abort(
    context: grpc.aio.ServicerContext[object, object], trailing: list[tuple[str, str]], code: str, message: str
) -> NoReturn:
    context.set_trailing_metadata(tuple(trailing))
    await context.abort(grpc.StatusCode[code], clip(message, MAX_MESSAGE_CHARS))
    raise AssertionError("unreachable")  # abort() raises
