"""Shared state in a real Redis: replicas keep one budget, one set of rate windows, one cache and one
breaker verdict.

Each test starts Debian's ``redis-server`` on a Unix socket of its own (tests/redis_server.py); the
"replicas" are two gateways (or two stores) in this process, each with its own Redis connection
pool, so nothing is shared between them but Redis.  The upstream is the OpenAI double, which
reports usage (12 prompt and 7 answer tokens per call).  Redis is killed mid-run to show budgets
refusing, the cache missing and rate limits refusing, and everything recovering when it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ratatoskr_client.client import AsyncServiceClient
from ratatoskr_client.errors import ResourceExhausted, Unavailable
from ratatoskr_client.types import ChatOptions, Message
from ratatoskr_server.config import BreakerSettings, Settings, StateSettings, load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.gateway import Gateway
from ratatoskr_server.policy.budget.pricing import Price
from ratatoskr_server.policy.params import ParameterGuard
from ratatoskr_server.routing.breaker import Breakers
from ratatoskr_server.state.breakers import Phase
from ratatoskr_server.state.budget import Bucket, Refusal, Reservation
from ratatoskr_server.state.factory import SharedState, shared_state
from ratatoskr_server.state.redis_budget import RedisBudgetLedger
from ratatoskr_server.state.redis_cache import RedisResponseCache
from ratatoskr_server.state.redis_conn import RedisState
from ratatoskr_server.state.redis_rates import RedisRates
from ratatoskr_server.state.redis_sync import SharedVerdicts
from ratatoskr_server.telemetry.metrics import Metrics
from tests.conftest import DaemonProcess
from tests.redis_server import RedisServer
from tests.upstreams import openai_double
from tests.upstreams.harness import Upstream, serve

HI = [Message("user", "hi")]
#: Input free, output $2 per million: a call's hold (max_tokens 7) is exactly what it costs (7 tokens).
PRICE = Price(Decimal(0), Decimal(2))
CALL_COST = PRICE.cost(12, 7)
ASK = ChatOptions(model="up/gpt-4o", max_tokens=7)
PASSWORD = "s3cret-redis-pw-4711"


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as up:
        yield up


#: The limit on each Redis command in these tests, unless a test sets its own.  redis-py measures its
#: socket timeout on the event loop, so it also counts the time a reply waits for its coroutine to be
#: scheduled: with hundreds of calls in flight on a loaded 2-core CI machine the 0.5 s default fired
#: for a healthy Redis.  These tests prove sharing, not latency; the timeout tests set their own.
TIMEOUT_S = 5.0


def _state(redis: RedisServer, metrics: Metrics | None = None, **extra: Any) -> RedisState:
    extra.setdefault("timeout_s", TIMEOUT_S)
    return RedisState(StateSettings(url=redis.url, retry_after_s=0.001, **extra), metrics)


def _settings(redis: RedisServer, upstream: Upstream, tmp: Path, **sections: Any) -> Settings:
    config: dict[str, Any] = {
        "local": {"model_dir": tmp / "models", "auto_import_default": False, "preload": []},
        "providers": {"up": {"kind": "openai_compat", "base_url": f"{upstream.base_url}/v1"}},
        "state": {"backend": "redis", "url": redis.url, "retry_after_s": 0.001, "timeout_s": TIMEOUT_S},
        "budget": {"prices": {"up/*": {"input_per_million": "0", "output_per_million": "2"}}},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return load_settings(**config)


def _replica(settings: Settings) -> EmbeddedGateway:
    return EmbeddedGateway(settings, gateway=Gateway.from_settings(settings))


@pytest.fixture
async def replicas(
    redis: RedisServer, upstream: Upstream, tmp_path: Path
) -> AsyncIterator[tuple[EmbeddedGateway, EmbeddedGateway]]:
    settings = _settings(
        redis, upstream, tmp_path, budget={"daily_usd": str(CALL_COST * 50)}, cache={"enabled": True, "chat": True}
    )
    a, b = _replica(settings), _replica(settings)
    yield a, b
    await a.close()
    await b.close()


def _bucket(limit: str, scope: str = "global", window: str = "day:2026-01-01") -> Bucket:
    return Bucket(scope, window, Decimal(limit), datetime(2026, 1, 2, tzinfo=UTC))


# -- budget -----------------------------------------------------------------------------------------
async def test_two_replicas_racing_for_one_budget_hold_exactly_what_fits(redis: RedisServer) -> None:
    """200 reserves of $1 on two connections against $50 (and a caller's $80): exactly 50 held."""
    one, two = _state(redis), _state(redis)
    a = RedisBudgetLedger(one, reservation_ttl_s=900)
    b = RedisBudgetLedger(two, reservation_ttl_s=900)
    buckets = [_bucket("50"), _bucket("80", "caller:x")]
    try:
        results = await asyncio.gather(
            *((a if i % 2 else b).reserve(buckets, Decimal(1), now=0, expires_at=100) for i in range(200))
        )
        held = [r for r in results if isinstance(r, Reservation)]
        assert len(held) == 50 and len({r.id for r in held}) == 50
        refused = [r for r in results if isinstance(r, Refusal)]
        assert all(r.state.bucket.scope == "global" and r.state.reserved == 50 for r in refused)
        await asyncio.gather(*((a if r.id % 2 else b).settle(r, Decimal("0.000000001")) for r in held))
        await a.settle(held[0], Decimal(5))  # a settle retried after a lost reply charges once
        day, caller = await b.states(buckets, now=0)
        assert (day.spent, day.reserved, caller.spent) == (Decimal("0.00000005"), 0, Decimal("0.00000005"))
        assert await a.scopes(["day:2026-01-01"]) == ["caller:x", "global"]
    finally:
        await one.close()
        await two.close()


async def test_reservations_of_a_dead_replica_lapse(redis: RedisServer) -> None:
    state = _state(redis)
    ledger = RedisBudgetLedger(state, reservation_ttl_s=900)
    bucket = _bucket("1")
    kept = await ledger.reserve([bucket], Decimal("0.6"), now=0, expires_at=10)
    assert isinstance(kept, Reservation)
    assert isinstance(await ledger.reserve([bucket], Decimal("0.6"), now=9, expires_at=19), Refusal)
    assert isinstance(await ledger.reserve([bucket], Decimal("0.6"), now=10, expires_at=20), Reservation)
    [level] = await ledger.states([bucket], now=10)
    assert level.reserved == Decimal("0.6")
    assert await ledger.expire(20) == 1
    await state.close()


async def test_two_gateways_sharing_redis_never_overspend(
    replicas: tuple[EmbeddedGateway, EmbeddedGateway], upstream: Upstream
) -> None:
    """200 concurrent paid calls split across two gateways against a day that fits exactly 50."""
    a, b = replicas
    before = len(upstream.requests)

    async def call(i: int) -> bool:
        try:
            await (a if i % 2 else b).chat(HI, ASK)
        except ResourceExhausted:
            return False
        return True

    succeeded = sum(await asyncio.gather(*(call(i) for i in range(200))))
    assert succeeded == 50 and len(upstream.requests) - before == 50
    for gw in (a, b):
        [day] = [s for s in await gw.gateway.budget("global") if s.window.startswith("day:")]
        assert (day.spent_usd, day.reserved_usd, day.limit_usd) == (CALL_COST * 50, 0, CALL_COST * 50)


# -- rates ------------------------------------------------------------------------------------------
async def test_an_rpm_limit_holds_exactly_across_replicas(redis: RedisServer) -> None:
    clock = Clock(1000.0)
    one, two = _state(redis), _state(redis)
    a, b = RedisRates(one, clock), RedisRates(two, clock)
    results = await asyncio.gather(*((a if i % 2 else b).admit("team", rpm=60, tpm=None) for i in range(200)))
    assert sum(r is None for r in results) == 60
    refused = [r for r in results if r is not None]
    assert {r.limit for r in refused} == {"rpm"} and all(r.retry_after_s == pytest.approx(60) for r in refused)
    clock.now += 30
    [limited] = [await b.admit("team", rpm=60, tpm=None)]
    assert limited is not None and limited.retry_after_s == pytest.approx(30)
    clock.now += 30.001  # the minute has slid past every call
    assert await a.admit("team", rpm=60, tpm=None) is None
    # tpm: tokens one replica records count on the other.
    assert await a.admit("tok", rpm=None, tpm=100) is None
    await a.record_tokens("tok", 60)
    await a.record_tokens("tok", 50)
    clock.now += 10
    limited = await b.admit("tok", rpm=None, tpm=100)
    assert limited is not None and limited.limit == "tpm" and limited.retry_after_s == pytest.approx(50)
    await one.close()
    await two.close()


# -- cache ------------------------------------------------------------------------------------------
async def test_an_answer_cached_by_one_gateway_is_a_hit_on_the_other(
    replicas: tuple[EmbeddedGateway, EmbeddedGateway], upstream: Upstream
) -> None:
    a, b = replicas
    asked = ChatOptions(model="up/gpt-4o", max_tokens=7, temperature=0, seed=3)
    before = len(upstream.requests)
    first = await a.chat([Message("user", "cache me")], asked)
    second = await b.chat([Message("user", "cache me")], asked)
    assert first.notes.cache_hits == 0 and second.notes.cache_hits == 1
    assert second.message.content == first.message.content and len(upstream.requests) - before == 1


async def test_the_cache_is_bounded_and_entries_expire(redis: RedisServer) -> None:
    state = _state(redis)
    entry = 1 + 100 + 128
    cache = RedisResponseCache(state, ttl_s=60, max_bytes=3 * entry)
    await cache.put_many([(k, bytes(100)) for k in "abc"])
    await cache.put_many([("d", bytes(100))])  # the oldest written goes
    assert [v is not None for v in await cache.get_many(list("abcd"))] == [False, True, True, True]
    await cache.put_many([("huge", bytes(4 * entry))])
    assert await cache.get_many(["huge"]) == [None] and cache.evictions == 1
    short = RedisResponseCache(state, ttl_s=0.05, max_bytes=10_000)
    await short.clear()
    await short.put_many([("x", b"v")])
    assert await short.get_many(["x"]) == [b"v"]
    ttl = await state.client.pttl(short.entry + "x")
    assert 0 < ttl <= 50  # Redis drops it when its TTL runs out
    await state.close()


# -- breakers and parameter rejections --------------------------------------------------------------
async def test_a_breaker_opened_on_one_replica_is_open_on_the_other(redis: RedisServer) -> None:
    settings = BreakerSettings(min_calls=3, failure_threshold=0.6, cooldown_s=10.0, half_open_probes=1)
    clock_a, clock_b = Clock(100.0), Clock(5000.0)  # replicas' monotonic clocks need not agree
    one, two = _state(redis), _state(redis)
    store_a, store_b = SharedVerdicts(one, monotonic=clock_a), SharedVerdicts(two, monotonic=clock_b)
    a, b = Breakers(settings, store_a, clock_a), Breakers(settings, store_b, clock_b)
    key = "up/gpt-4o"
    for _ in range(3):
        assert a.admit(key)
        a.record(key, True)
    assert a.phases()[key] is Phase.OPEN and b.admit(key)  # b has not read it back yet
    b.release(key)
    await store_a.flush()
    await store_b.sync()
    assert b.phases()[key] is Phase.OPEN and not b.admit(key)
    assert b.retry_after(key) == pytest.approx(10.0, abs=0.5)
    clock_b.now += 10.5  # b's probe after the shared cooldown succeeds: closed for both
    assert b.admit(key)
    b.record(key, False)
    await store_b.flush()
    await store_a.sync()
    assert a.phases()[key] is Phase.CLOSED and a.admit(key)
    # A parameter one replica saw refused is dropped by the other.
    guard_a, guard_b = ParameterGuard(Settings()), ParameterGuard(Settings())
    guard_a.shared, store_b.target = store_a, guard_b
    sent = ChatOptions(model="up/o1", temperature=0.3)
    assert guard_a.remember_rejection("up", "o1", "Unsupported parameter: 'temperature'", sent) == ["temperature"]
    await store_a.flush()
    await store_b.sync()
    options, dropped = guard_b.check(sent, provider="up", model="o1", supported=frozenset({"temperature"}), known={})
    assert dropped == ["temperature"] and options.temperature is None
    await store_a.close()
    await store_b.close()
    await one.close()
    await two.close()


# -- Redis away -------------------------------------------------------------------------------------
async def test_redis_killed_mid_run_fails_closed_and_recovers(
    redis: RedisServer, upstream: Upstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(redis, upstream, tmp_path, budget={"daily_usd": "1"}, cache={"enabled": True, "chat": True})
    gw = _replica(settings)
    shared = gw.gateway.shared
    assert isinstance(shared, SharedState)
    metrics = gw.gateway.metrics
    try:
        await gw.chat(HI, ASK)  # served and charged
        cached = await shared.cache.put_many([("k", b"v")])
        assert cached is None and await shared.cache.get_many(["k"]) == [b"v"]
        redis.stop()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            started = asyncio.get_running_loop().time()
            with pytest.raises(Unavailable, match=r"unreachable.*paid calls under a budget are refused"):
                await gw.chat(HI, ASK)
            assert asyncio.get_running_loop().time() - started < 2 * settings.state.timeout_s + 0.5  # no hang
            assert await shared.cache.get_many(["k"]) == [None]  # a miss, not an error
            await shared.cache.put_many([("k2", b"v")])  # skipped quietly
            with pytest.raises(Unavailable, match="rate limits of caller 'team'"):
                await shared.rates.admit("team", rpm=10, tpm=None)
        assert any("shared state (redis at" in r.getMessage() for r in caplog.records)
        assert metrics.state_up._value.get() == 0
        assert metrics.state_failures.labels(store="budget")._value.get() >= 1
        assert metrics.state_failures.labels(store="cache")._value.get() >= 1
        redis.start()  # empty (no persistence), as after a crash without a volume
        await asyncio.sleep(0.01)  # past state.retry_after_s (1 ms)
        result = await gw.chat(HI, ASK)
        assert result.message.content and metrics.state_up._value.get() == 1
        assert await shared.rates.admit("team", rpm=10, tpm=None) is None
        await shared.cache.put_many([("k", b"back")])
        assert await shared.cache.get_many(["k"]) == [b"back"]
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        await gw.close()


async def test_a_settle_that_missed_redis_is_charged_once_it_returns(redis: RedisServer) -> None:
    state = _state(redis)
    ledger = RedisBudgetLedger(state, reservation_ttl_s=900)
    bucket = _bucket("10")
    held = await ledger.reserve([bucket], Decimal(2), now=0, expires_at=100)
    assert isinstance(held, Reservation)
    redis.stop()
    await ledger.settle(held, Decimal(1))  # cannot reach Redis: kept, not lost
    assert ledger.pending == 1
    redis.start()
    await asyncio.sleep(0.01)
    await ledger.reserve([bucket], Decimal(3), now=1, expires_at=100)  # flushes the waiting settle first
    [level] = await ledger.states([bucket], now=1)
    assert (level.spent, level.reserved, ledger.pending) == (1, 3, 0)
    await state.close()


async def test_allow_mode_lets_paid_calls_through_with_a_warning(
    redis: RedisServer, upstream: Upstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(
        redis, upstream, tmp_path, budget={"daily_usd": "1"}, state={"budget_when_unavailable": "allow"}
    )
    gw = _replica(settings)
    try:
        redis.stop()
        with caplog.at_level(logging.WARNING):
            assert (await gw.chat(HI, ASK)).message.content
        assert any("budget not enforced" in r.getMessage() for r in caplog.records)
    finally:
        await gw.close()


async def test_the_password_never_reaches_logs_or_errors(
    upstream: Upstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(password=PASSWORD).start()
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(f'REDIS_URL = "{server.url}"\n')
    secrets.chmod(0o600)
    config = tmp_path / "config.toml"
    config.write_text(
        f'secrets_file = "{secrets}"\n[state]\nbackend = "redis"\nurl = "${{REDIS_URL}}"\nretry_after_s = 0.001\n'
        f'[budget]\ndaily_usd = "1"\n[budget.prices."up/*"]\ninput_per_million = "0"\noutput_per_million = "2"\n'
        f'[providers.up]\nkind = "openai_compat"\nbase_url = "{upstream.base_url}/v1"\n'
        f'[local]\nmodel_dir = "{tmp_path}/models"\nauto_import_default = false\n'
    )
    settings = load_settings(config)
    assert PASSWORD in settings.secret_values() and PASSWORD not in str(settings.masked())
    gw = _replica(settings)
    try:
        assert (await gw.chat(HI, ASK)).message.content  # authenticated with the password from the secrets file
        server.stop()
        with caplog.at_level(logging.DEBUG), pytest.raises(Unavailable) as refused:
            await gw.chat(HI, ASK)
        assert PASSWORD not in refused.value.message and "********@" in refused.value.message
        assert caplog.records and all(PASSWORD not in r.getMessage() for r in caplog.records)
    finally:
        await gw.close()
        server.close()


def test_the_state_backend_is_shared_only_when_asked(tmp_path: Path) -> None:
    assert shared_state(Settings()) is None
    settings = Settings(state=StateSettings(backend="redis", url="redis://:pw@127.0.0.1:1/0"))
    shared = shared_state(settings)
    assert shared is not None and shared.redis.where == "redis://********@127.0.0.1:1/0"


# -- two daemon processes ---------------------------------------------------------------------------
def test_two_daemons_share_one_budget_and_refuse_while_redis_is_away(
    redis: RedisServer, upstream: Upstream, tmp_path: Path
) -> None:
    """400 calls over gRPC split across two `ratatoskr serve` processes, a day that fits exactly 100;
    then Redis is killed (UNAVAILABLE, promptly) and restarted (served again)."""
    config: dict[str, Any] = {
        "local": {"model_dir": tmp_path / "models", "auto_import_default": False, "preload": []},
        "providers": {"up": {"kind": "openai_compat", "base_url": f"{upstream.base_url}/v1"}},
        "state": {"backend": "redis", "url": redis.url, "retry_after_s": 0.001, "timeout_s": TIMEOUT_S},
        "budget": {
            "daily_usd": str(CALL_COST * 100),
            "prices": {"up/*": {"input_per_million": "0", "output_per_million": "2"}},
        },
    }
    daemons = [DaemonProcess(tmp_path, **config).start(), DaemonProcess(tmp_path, **config).start()]

    async def calls() -> list[Any]:
        async with (
            AsyncServiceClient(daemons[0].socket, timeout=60) as one,
            AsyncServiceClient(daemons[1].socket, timeout=60) as two,
        ):
            return await asyncio.gather(*((one, two)[i % 2].chat(HI, ASK) for i in range(400)), return_exceptions=True)

    try:
        results = asyncio.run(calls())
        refused = [r for r in results if isinstance(r, ResourceExhausted)]
        assert len(refused) == 300 and sum(not isinstance(r, BaseException) for r in results) == 100
        with daemons[1].client(timeout=5) as client:
            (day,) = client.get_budget("global")
        assert (day.spent_usd, day.reserved_usd) == (CALL_COST * 100, 0)
        redis.stop()
        for daemon in daemons:
            with daemon.client(timeout=10) as client, pytest.raises(Unavailable, match="unreachable"):
                client.chat(HI, ASK)
        redis.start()
        time.sleep(0.05)  # past state.retry_after_s
        with daemons[0].client(timeout=10) as client:
            assert client.chat(HI, ASK).message.content  # a fresh Redis: an empty day
    finally:
        for daemon in daemons:
            daemon.stop()


async def test_a_busy_connection_pool_is_a_queue_not_an_outage(redis: RedisServer) -> None:
    """Six calls share one pooled connection, each holding it 50 to 150 ms (Redis ends a blocking pop on
    its 10 Hz timer; timeout_s is 300 ms): the last waits well over timeout_s for the connection and
    still succeeds, and Redis is never marked away. The pool's own wait gave up after timeout_s with
    "No connection available" and failed every store closed."""
    state = _state(redis, max_connections=1, timeout_s=0.3)
    key = state.prefix + "never-pushed"
    try:
        held = await asyncio.gather(*(state.call("cache", lambda: state.client.blpop([key], 0.05)) for _ in range(6)))
        assert held == [None] * 6
        assert state.up
    finally:
        await state.close()
