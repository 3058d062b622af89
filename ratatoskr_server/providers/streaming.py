"""The one streaming skeleton every HTTP adapter uses; each supplies only its wire decoder.

What the skeleton owns, so no adapter repeats or forgets it: the POST, a non-2xx status read and
mapped, the end marker handed out at once (its ``Done`` is never held back behind the drain that
reads the rest of the body to keep the connection reusable), a body cut before the answer is
complete reported as UNAVAILABLE, a body cut *after* it is complete (finish reason seen) ending
cleanly, and transport or parse failures mapped to domain errors at this one boundary.

It also keeps the idle bound (``providers.NAME.stream_idle_timeout_s``): the longest wait for the
next record that carries an event.  An upstream that is stuck but sends SSE keep-alive comments
(``: ping``, which the SSE reader drops before they become records) or Anthropic ``ping`` events
(records that yield no event) still has its bytes reset ``http.read_timeout_s``; only this bound sees
that nothing of the answer came.  It fails as UNAVAILABLE, so retry and fallback can act on it.
The time a yielded event spends with the consumer is not counted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing
from typing import Any, Protocol

import httpx
from httpx_sse import SSEError

from ratatoskr_client.errors import RatatoskrError, Unavailable
from ratatoskr_client.types import ChatEvent
from ratatoskr_server.net.client import UpstreamClient
from ratatoskr_server.providers.base import drained


class WireDecoder(Protocol):
    """One wire format's stream: records in (SSE events, NDJSON lines), domain events out."""

    def records(self, response: httpx.Response) -> AsyncIterator[Any]: ...

    def events(self, record: Any) -> Iterable[ChatEvent]:
        """Events for one record; an error the upstream sent inside the stream is raised here."""
        ...

    #: The end marker arrived: nothing more of the answer follows.
    @property
    def ended(self) -> bool: ...

    #: Enough arrived (a finish reason) that the answer stands even if the body is cut now.
    @property
    def complete(self) -> bool: ...

    def closing(self) -> Iterable[ChatEvent]:
        """The last events (open tool calls closed, usage, ``Done``), once."""
        ...


async def relay(
    client: UpstreamClient,
    url: str,
    body: dict[str, Any],
    params: dict[str, str],
    decoder: WireDecoder,
    *,
    status_error: Callable[[int, str, httpx.Headers], RatatoskrError],
    transport_error: Callable[[Exception], RatatoskrError],
    provider: str,
    idle_timeout_s: float = 0.0,
) -> AsyncIterator[ChatEvent]:
    closed = False
    loop = asyncio.get_running_loop()
    try:
        async with client.stream("POST", url, json=body, params=params) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", "replace")
                raise status_error(response.status_code, text, response.headers)
            records = drained(decoder.records(response), lambda: decoder.ended)
            last = loop.time()
            async with aclosing(records):  # type: ignore[type-var]
                while True:
                    try:
                        async with asyncio.timeout_at(last + idle_timeout_s if idle_timeout_s else None):
                            record = await anext(records)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        if decoder.complete:
                            break  # only the read past the answer's end was slow
                        raise Unavailable(
                            f"{provider}: no stream event for {idle_timeout_s:g}s "
                            f"(providers.{provider}.stream_idle_timeout_s; keep-alive comments and pings do not count)"
                        ) from None
                    produced = False
                    for event in decoder.events(record):
                        produced = True
                        yield event
                    if produced:
                        last = loop.time()  # after the consumer took them: its time is not the upstream's
                    if decoder.ended and not closed:
                        closed = True
                        for event in decoder.closing():
                            yield event
            if not decoder.complete:
                raise Unavailable(f"{provider}: the stream ended before the answer was complete")
    except RatatoskrError:
        raise
    except (httpx.HTTPError, SSEError, json.JSONDecodeError) as err:
        if not decoder.complete:
            raise transport_error(err) from None
        # The answer was complete; only the read past its end failed.
    if not closed:
        for event in decoder.closing():
            yield event
