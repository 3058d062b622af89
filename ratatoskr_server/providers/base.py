"""The base every HTTP provider adapter builds on.

A provider turns domain calls into one upstream's wire format and back:
requests, SSE/NDJSON streams, error bodies.  It declares what it can do and
which generation parameters its wire format carries; it never decides
policy (privacy, budgets, retries, fallback), which wraps it from above.

Streams yield domain ``ChatEvent``s and end with one ``Done`` carrying the
upstream's finish reason; a failure after the first event is raised as a
``RatatoskrError`` so the caller sees a failed call, never a clean end.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC
from collections.abc import AsyncIterator, Callable, Sequence
from functools import cached_property
from typing import ClassVar, TypeVar

import httpx
import numpy as np

from ratatoskr_client.errors import RatatoskrError, Unavailable, Unimplemented
from ratatoskr_client.types import EmbedResult, Timing
from ratatoskr_server.config import HttpSettings, ProviderSettings
from ratatoskr_server.net.client import UpstreamClient
from ratatoskr_server.net.egress import EgressPolicy, Reach, host_of, port_of
from ratatoskr_server.net.http import build_client
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.providers.errors import error_from_status
from ratatoskr_server.providers.scrub import Scrubber
from ratatoskr_server.telemetry.tracing import Tracing

#: After a stream's end marker, how long to keep reading for the rest of the body. Reading it to
#: its end returns the connection to the pool (no new TCP/TLS handshake for the next stream);
#: the bound keeps an upstream that holds the connection open from stalling the answer.
DRAIN_AFTER_END_S = 1.0


T = TypeVar("T")


async def drained(items: AsyncIterator[T], done: Callable[[], bool]) -> AsyncIterator[T]:
    """Yield ``items`` until ``done()`` (the stream's end marker was seen), then read the rest unyielded."""
    async for item in items:
        yield item
        if done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_AFTER_END_S):
                    async for _ in items:
                        pass
            return


class HttpProvider(ABC):
    """What every HTTP adapter shares: its settings, its client, its secrets, its model list.

    Capabilities come from the protocols in ``providers/capabilities.py``: an adapter defines the
    methods of each capability it declares and nothing else.
    """

    kind: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]]
    #: ChatOptions fields this wire format carries.
    supported_parameters: ClassVar[frozenset[str]]

    def __init__(
        self,
        name: str,
        settings: ProviderSettings,
        http: HttpSettings,
        egress: EgressPolicy | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.http_settings = http
        self.egress = egress or EgressPolicy()
        # Adapters build absolute URLs (Azure puts the deployment, {model}, inside the base URL).
        self.client: UpstreamClient = build_client(
            http, base_url="", headers=self.default_headers(), egress=self.egress, tracing=tracing
        )
        self.scrubber = Scrubber(self.secrets)
        #: The host and port the base URL names: what the privacy stage checks before a call
        #: (parsed once: parsing a URL costs more than the whole check).
        self.origin: tuple[str, int] = (
            (host_of(settings.base_url), port_of(settings.base_url)) if settings.base_url else ("", 0)
        )

    async def reach(self) -> Reach:
        """Where this provider's host resolves (briefly cached) and the tier it satisfies."""
        return await self.egress.reach(*self.origin)

    @property
    def local(self) -> bool:
        return self.settings.local

    @cached_property
    def secrets(self) -> list[str]:
        """Values that must never appear in anything this provider reports. Worked out once: the
        settings are fixed for the adapter's life (a reload builds new adapters), and parsing the
        base URL's user-info on every call was a measurable part of a call's own cost."""
        return self.settings.secret_values()

    def default_headers(self) -> dict[str, str]:
        headers = dict(self.settings.headers)
        key = self.settings.api_key.get_secret_value() if self.settings.api_key else ""
        if key:
            header = self.settings.api_key_header
            headers[header] = f"Bearer {key}" if header.lower() == "authorization" else key
        return headers

    def status_error(self, status: int, text: str, headers: httpx.Headers) -> RatatoskrError:
        """A non-2xx answer as the domain error it means (an adapter may refine it)."""
        return error_from_status(self.name, status, text, headers, self.secrets)

    def _unsupported(self, what: str) -> Unimplemented:
        return Unimplemented(f"provider '{self.name}' ({self.kind}) does not offer {what}")

    async def list_models(self) -> list[str]:
        """Model names the upstream offers (configured ``models`` when it cannot say)."""
        return list(self.settings.models)

    async def aclose(self) -> None:
        await self.client.aclose()


async def embed_result(provider: str, model: str, inputs: Sequence[str], vectors: list[list[float]]) -> EmbedResult:
    """An upstream's vectors as a result: one per input or a failure, with the norm checked off the loop.

    Vectors are matched to inputs by position, so a short or long answer would pair the wrong ones.
    """
    if len(vectors) != len(inputs):
        raise Unavailable(f"{provider}: answered {len(vectors)} embeddings for {len(inputs)} inputs")

    def unit_norm() -> bool:  # numpy, off the loop: a 2048 x 1536 answer is 3 million floats
        matrix = np.asarray(vectors, dtype=np.float64)
        return bool(matrix.size == 0 or np.all(np.abs(np.linalg.norm(matrix, axis=1) - 1.0) < 1e-3))

    normalized = await asyncio.to_thread(unit_norm)
    return EmbedResult(
        vectors=vectors,
        tokens=[0] * len(vectors),  # the upstream does not say per input
        truncated=[False] * len(vectors),
        dimension=len(vectors[0]) if vectors else 0,
        model=model,
        normalized=normalized,
        timing=Timing(),
    )
