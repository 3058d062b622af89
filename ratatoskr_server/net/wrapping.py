"""A transport that stands in front of another: the one place the lifecycle is handed down.

The providers' client stacks several (request slots, tracing) over the guarded pool; each adds its
own ``handle_async_request`` and inherits closing and the context-manager protocol from here.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

import httpx


class WrappingTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self._inner.__aexit__(exc_type, exc_value, traceback)
