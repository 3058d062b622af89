"""The one streaming skeleton every HTTP adapter uses; each supplies only its wire decoder.

What the skeleton owns, so no adapter repeats or forgets it: the POST, a non-2xx status read and
mapped, the end marker handed out at once (its ``Done`` is never held back behind the drain that
reads the rest of the body to keep the connection reusable), a body cut before the answer is
complete reported as UNAVAILABLE, a body cut *after* it is complete (finish reason seen) ending
cleanly, and transport or parse failures mapped to domain errors at this one boundary.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Protocol

import httpx
from httpx_sse import SSEError

from ratatoskr_client.errors import RatatoskrError, Unavailable
from ratatoskr_client.types import ChatEvent
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
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    params: dict[str, str],
    decoder: WireDecoder,
    *,
    status_error: Callable[[int, str, httpx.Headers], RatatoskrError],
    transport_error: Callable[[Exception], RatatoskrError],
    provider: str,
) -> AsyncIterator[ChatEvent]:
    closed = False
    try:
        async with client.stream("POST", url, json=body, params=params) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", "replace")
                raise status_error(response.status_code, text, response.headers)
            async for record in drained(decoder.records(response), lambda: decoder.ended):
                for event in decoder.events(record):
                    yield event
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
