"""One Redis connection pool for every shared store, and whether Redis is reachable right now.

Every command goes through :meth:`RedisState.call`, which puts a limit on it (``state.timeout_s``;
nothing waits on an unreachable Redis longer) and keeps the verdict: after a failure, calls fail at
once for ``state.retry_after_s`` instead of each paying a timeout, then the next one tries again.
The change each way is logged once and shown in ``ratatoskr_state_backend_up``; what each store
does when Redis is away (refuse, miss, skip) is its own decision.

redis-py's own retries are turned off: a script that timed out may still have run, and retrying a
settle blindly could charge twice (the settle script is idempotent, and the ledger retries it
itself once Redis is back).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ratatoskr_server.config import StateSettings
from ratatoskr_server.redact import display_url, scrub
from ratatoskr_server.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")


class StateUnavailable(Exception):
    """Redis could not be reached (or answered an error) for one operation; the message holds no secret."""


def redis_client(settings: StateSettings) -> Redis:
    """The asyncio client ``settings`` describes: pooled, lazy (nothing connects until the first
    command), every socket operation limited by ``timeout_s``, no hidden retries."""
    url = settings.url.get_secret_value()
    options: dict[str, Any] = {
        "socket_timeout": settings.timeout_s,
        "socket_connect_timeout": settings.timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
        "client_name": "ratatoskr",
    }
    if settings.username:
        options["username"] = settings.username
    if settings.password is not None:
        options["password"] = settings.password.get_secret_value()
    if url.startswith("rediss://"):
        options["ssl_check_hostname"] = settings.tls_check_hostname
        if settings.tls_ca_file is not None:
            options["ssl_ca_certs"] = str(settings.tls_ca_file.expanduser())
        if settings.tls_cert_file is not None:
            options["ssl_certfile"] = str(settings.tls_cert_file.expanduser())
        if settings.tls_key_file is not None:
            options["ssl_keyfile"] = str(settings.tls_key_file.expanduser())
    # A bounded pool that makes callers wait for a connection (up to timeout_s) rather than opening
    # one per concurrent call: a burst of hundreds of calls shares a few connections.
    pool = BlockingConnectionPool.from_url(
        url, max_connections=settings.max_connections, timeout=settings.timeout_s, **options
    )
    return Redis(connection_pool=pool)


class RedisState:
    """The client, the key prefix, and the reachability verdict shared by the Redis stores."""

    def __init__(
        self,
        settings: StateSettings,
        metrics: Metrics | None = None,
        *,
        client: Redis | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.client = client if client is not None else redis_client(settings)
        self.prefix = settings.key_prefix
        self.clock = clock
        self.secrets = settings.secret_values()
        #: Where Redis is, fit for a log line (no user-info).
        self.where = display_url(settings.url.get_secret_value())
        self.up = True
        self._retry_at = 0.0
        self._reason = ""
        #: One per pooled connection: callers queue here, bounded by their own deadlines, so a busy
        #: pool is backpressure and never reads as Redis being away (the pool's own wait would time
        #: out after timeout_s and mark every store unavailable for retry_after_s).
        self._connections = asyncio.Semaphore(settings.max_connections)
        if metrics is not None:
            metrics.state_up.set(1)

    def describe(self, err: BaseException) -> str:
        """``err`` in words, with the URL's credentials and the password masked."""
        text = str(err) or type(err).__name__
        return scrub(f"{type(err).__name__}: {text}", self.secrets)

    async def call(self, store: str, op: Callable[[], Awaitable[T]]) -> T:
        """``op()`` within ``state.timeout_s``; :class:`StateUnavailable` when Redis is away or fails."""
        self._fail_fast(store)
        async with self._connections:
            self._fail_fast(store)  # Redis may have gone while this call queued
            try:
                # The socket timeouts bound each read and connect; this bounds the whole operation.
                result = await asyncio.wait_for(op(), self.settings.timeout_s * 3)
            except (RedisError, OSError, TimeoutError) as err:
                self._failed(store, err)
                raise StateUnavailable(self._reason) from None
        if not self.up:
            self._recovered()
        return result

    def _fail_fast(self, store: str) -> None:
        if not self.up and self.clock() < self._retry_at:
            self._count(store)
            raise StateUnavailable(self._reason)

    def _count(self, store: str) -> None:
        if self.metrics is not None:
            self.metrics.state_failures.labels(store=store).inc()

    def _failed(self, store: str, err: BaseException) -> None:
        self._count(store)
        self._reason = f"shared state (redis at {self.where}) is unreachable: {self.describe(err)}"
        self._retry_at = self.clock() + self.settings.retry_after_s
        if self.up:
            self.up = False
            if self.metrics is not None:
                self.metrics.state_up.set(0)
            log.error(
                f"{self._reason}; budgets {'refuse' if self.settings.budget_when_unavailable == 'refuse' else 'allow'}"
                " paid calls, rate-limited callers are refused, the response cache misses, until it returns",
                extra={"store": store},
            )

    def _recovered(self) -> None:
        self.up = True
        self._reason = ""
        if self.metrics is not None:
            self.metrics.state_up.set(1)
        log.warning(f"shared state (redis at {self.where}) is reachable again")

    async def ping(self) -> bool:
        try:
            await self.call("ping", self.client.ping)
        except StateUnavailable:
            return False
        return True

    async def close(self) -> None:
        await self.client.aclose()
