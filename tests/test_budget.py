"""Cost budgets: reservations that cannot overspend, settled to what each call really used.

The ledger is the real SQLite one on disk, the upstream the OpenAI double (it reports usage:
12 prompt and 7 completion tokens per call), and the biggest test runs 200 concurrent calls through
a real daemon over gRPC, then checks the ledger file itself after the daemon has stopped.  Windows
are checked with an injected clock; spend survives a restart of the daemon.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest

from ratatoskr_client import ResourceExhausted
from ratatoskr_client._proto.ratatoskr.v1 import gateway_pb2, gateway_pb2_grpc
from ratatoskr_client.client import BUDGET_WARNING_KEY, AsyncServiceClient
from ratatoskr_client.convert import chat_options_to_pb, message_to_pb, notes_from_pb
from ratatoskr_client.errors import FailedPrecondition, RatatoskrError
from ratatoskr_client.types import ChatOptions, ContentDelta, Message
from ratatoskr_server.cli import main as cli_main
from ratatoskr_server.config import ConfigError, load_settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.gateway import Gateway
from ratatoskr_server.policy.budget.pricing import Price
from ratatoskr_server.policy.budget.windows import day_window, month_window
from ratatoskr_server.policy.templates.render import estimate_messages, estimate_tokens
from ratatoskr_server.state.budget import Bucket, Refusal, Reservation
from ratatoskr_server.state.sqlite import SqliteBudgetLedger
from tests.conftest import DaemonProcess
from tests.upstreams import openai_double
from tests.upstreams.harness import Upstream, serve

#: USD per million tokens declared for the double's models: one call (12 in, 7 out) costs 26 micro-dollars.
PRICE = Price(Decimal(1), Decimal(2))
CALL_COST = PRICE.cost(12, 7)
HI = [Message("user", "hi")]
BERLIN = ZoneInfo("Europe/Berlin")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as up:
        yield up


def _settings(upstream: Upstream, tmp: Path, **budget: Any) -> dict[str, Any]:
    return {
        "local": {"model_dir": tmp / "models", "auto_import_default": False, "preload": []},
        "providers": {
            "up": {"kind": "openai_compat", "base_url": f"{upstream.base_url}/v1"},
            # The same double as a server on this host (llama.cpp style): nothing to pay.
            "lan": {"kind": "openai_compat", "base_url": f"{upstream.base_url}/v1", "local": True},
        },
        "budget": {
            "ledger_path": str(tmp / "budget.sqlite3"),
            # First match wins: the free one before the glob.
            "prices": {
                "up/free": {"input_per_million": "0", "output_per_million": "0"},
                "up/*": {"input_per_million": "1", "output_per_million": "2"},
            },
            **budget,
        },
    }


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 3, 28, 22, 59, tzinfo=UTC))  # 23:59 in Berlin, the night before DST


async def _gateway(upstream: Upstream, tmp: Path, clock: Clock, **budget: Any) -> EmbeddedGateway:
    settings = load_settings(**_settings(upstream, tmp, **budget))
    return EmbeddedGateway(settings, gateway=Gateway.from_settings(settings, clock=clock))


@pytest.fixture
async def gw(upstream: Upstream, tmp_path: Path, clock: Clock) -> AsyncIterator[EmbeddedGateway]:
    g = await _gateway(upstream, tmp_path, clock, daily_usd=f"{CALL_COST * 3}", timezone="Europe/Berlin")
    yield g
    await g.close()


async def _day(gw: EmbeddedGateway, scope: str = "global") -> tuple[Decimal, Decimal]:
    budgets = [b for b in await gw.gateway.budget(scope) if b.window.startswith("day:")]
    assert len(budgets) == 1
    return budgets[0].spent_usd, budgets[0].reserved_usd


# -- the ledger alone ----------------------------------------------------------------------------


def _bucket(limit: str, scope: str = "global", window: str = "day:2026-01-01") -> Bucket:
    return Bucket(scope, window, Decimal(limit), datetime(2026, 1, 2, tzinfo=UTC))


async def test_concurrent_reserves_on_two_connections_never_pass_the_limit(tmp_path: Path) -> None:
    """Two ledgers on one file (two daemons): 200 racing reserves of $1 against $50 → exactly 50 held."""
    a, b = SqliteBudgetLedger(tmp_path / "l.db"), SqliteBudgetLedger(tmp_path / "l.db")
    buckets = [_bucket("50"), _bucket("80", "caller:x")]
    try:
        results = await asyncio.gather(
            *((a if i % 2 else b).reserve(buckets, Decimal(1), now=0, expires_at=100) for i in range(200))
        )
        held = [r for r in results if isinstance(r, Reservation)]
        assert len(held) == 50
        refused = [r for r in results if isinstance(r, Refusal)]
        assert all(r.state.bucket.scope == "global" and r.state.reserved == 50 for r in refused)
        await asyncio.gather(*(a.settle(r, Decimal("0.5")) for r in held))
        (day, caller) = await b.states(buckets, now=0)
        assert (day.spent, day.reserved, caller.spent) == (25, 0, 25)
    finally:
        await a.close()
        await b.close()


async def test_a_failing_ledger_job_leaves_nothing_alone_or_in_a_shared_commit(tmp_path: Path) -> None:
    """Each job is atomic: alone in its transaction, or beside others in one group commit."""
    ledger = SqliteBudgetLedger(tmp_path / "l.db")

    def writes(scope: str, fails: bool = False) -> Any:
        def job(db: sqlite3.Connection) -> str:
            db.execute("INSERT INTO spend (scope, window, nanos) VALUES (?, 'w', 1)", (scope,))
            if fails:
                raise RuntimeError(f"{scope} failed after writing")
            return scope

        return job

    try:
        with pytest.raises(RuntimeError, match="alone failed"):
            await ledger._submit(writes("alone", fails=True))
        assert await ledger._submit(writes("after")) == "after"  # the ledger goes on
        # Submitted together, these share one transaction (one flush takes all that are pending).
        shared = [ledger._submit(writes(s, fails=s == "middle")) for s in ("first", "middle", "last")]
        outcomes = await asyncio.gather(*shared, return_exceptions=True)
        assert outcomes[0] == "first" and outcomes[2] == "last" and isinstance(outcomes[1], RuntimeError)
    finally:
        await ledger.close()
    with sqlite3.connect(tmp_path / "l.db") as db:
        assert sorted(r[0] for r in db.execute("SELECT scope FROM spend")) == ["after", "first", "last"]


async def test_a_crashed_daemons_reservations_lapse_and_spend_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    ledger = SqliteBudgetLedger(path)
    bucket = _bucket("1")
    kept = await ledger.reserve([bucket], Decimal("0.4"), now=0, expires_at=10)
    assert isinstance(kept, Reservation)
    await ledger.settle(kept, Decimal("0.25"))
    lost = await ledger.reserve([bucket], Decimal("0.75"), now=0, expires_at=10)  # never settled: "crash"
    assert isinstance(lost, Reservation)
    assert isinstance(await ledger.reserve([bucket], Decimal("0.01"), now=5, expires_at=10), Refusal)
    await ledger.close()

    again = SqliteBudgetLedger(path)
    try:
        (state,) = await again.states([bucket], now=5)
        assert (state.spent, state.reserved) == (Decimal("0.25"), Decimal("0.75"))
        (state,) = await again.states([bucket], now=10)  # lapsed
        assert (state.spent, state.reserved) == (Decimal("0.25"), 0)
        assert isinstance(await again.reserve([bucket], Decimal("0.75"), now=10, expires_at=20), Reservation)
        # exact decimals: no float drift after many small charges
        held = await again.reserve([_bucket("1", window="day:x")], Decimal("0.1"), now=10, expires_at=20)
        assert isinstance(held, Reservation)
        for _ in range(3):
            await again.settle(held, Decimal("0.1"))
        (x,) = await again.states([_bucket("1", window="day:x")], now=10)
        assert x.spent == Decimal("0.3")
    finally:
        await again.close()


async def test_a_reserve_whose_caller_went_away_is_released(tmp_path: Path) -> None:
    ledger = SqliteBudgetLedger(tmp_path / "l.db")
    bucket = _bucket("1")
    try:
        task = asyncio.create_task(ledger.reserve([bucket], Decimal("0.9"), now=0, expires_at=100))
        await asyncio.sleep(0)  # submitted: the job runs whatever happens to its caller
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(50):
            (state,) = await ledger.states([bucket], now=0)
            if state.reserved == 0:
                break
            await asyncio.sleep(0.01)
        assert (state.spent, state.reserved) == (0, 0)
        assert isinstance(await ledger.reserve([bucket], Decimal("0.9"), now=0, expires_at=100), Reservation)
    finally:
        await ledger.close()


def test_windows_follow_the_calendar_of_the_zone() -> None:
    # Berlin leaves winter time on 2026-03-29: that day is 23 hours long.
    day = day_window(datetime(2026, 3, 28, 23, 30, tzinfo=UTC), BERLIN)
    assert day.name == "day:2026-03-29"
    assert day.ends_at == datetime(2026, 3, 29, 22, 0, tzinfo=UTC)
    assert day_window(datetime(2026, 3, 28, 22, 59, tzinfo=UTC), BERLIN).ends_at == datetime(
        2026, 3, 28, 23, 0, tzinfo=UTC
    )
    month = month_window(datetime(2026, 12, 31, 23, 30, tzinfo=UTC), BERLIN)
    assert (month.name, month.ends_at) == ("month:2027-01", datetime(2027, 1, 31, 23, 0, tzinfo=UTC))
    assert month_window(datetime(2026, 12, 31, 22, 30, tzinfo=UTC), BERLIN).name == "month:2026-12"


# -- the stage, in process -----------------------------------------------------------------------


async def test_the_window_rolls_over_at_midnight_in_the_configured_zone(gw: EmbeddedGateway, clock: Clock) -> None:
    for _ in range(3):
        await gw.chat(HI, ChatOptions(model="up/m", max_tokens=4))
    assert await _day(gw) == (CALL_COST * 3, 0)
    with pytest.raises(ResourceExhausted) as info:
        await gw.chat(HI, ChatOptions(model="up/m", max_tokens=4))
    assert info.value.retry_after_s == 60.0  # 23:59 → midnight in Berlin
    message = info.value.message
    assert "budget global (day:2026-03-28, Europe/Berlin)" in message
    assert "spent $0.000078, reserved $0, limit $0.000078" in message
    assert "window ends at 2026-03-28T23:00:00+00:00 (in 0h01m)" in message
    clock.now += timedelta(minutes=1, seconds=1)  # 00:00:01 in Berlin, 23:00:01 UTC: still the 28th in UTC
    answer = await gw.chat(HI, ChatOptions(model="up/m", max_tokens=4))
    assert answer.usage.completion_tokens == 7
    assert await _day(gw) == (CALL_COST, 0)
    (day,) = [b for b in await gw.gateway.budget() if b.window.startswith("day:")]
    assert (day.window, day.window_ends_at) == ("day:2026-03-29", "2026-03-29T22:00:00+00:00")  # 23 hours


async def test_a_warning_travels_in_the_notes(gw: EmbeddedGateway) -> None:
    first = await gw.chat(HI, ChatOptions(model="up/m", max_tokens=4))
    assert first.notes.budget_warning == ""
    await gw.chat(HI, ChatOptions(model="up/m", max_tokens=4))
    third = await gw.chat(HI, ChatOptions(model="up/m", max_tokens=4))
    assert third.notes.budget_warning.startswith("global day:2026-03-28: $")
    assert "spent or reserved" in third.notes.budget_warning
    assert gw.metrics.budget_warnings.labels(scope="global")._value.get() >= 1


async def test_upstream_failure_settles_nothing(gw: EmbeddedGateway) -> None:
    with pytest.raises(RatatoskrError):
        await gw.chat(HI, ChatOptions(model="up/server-error", max_tokens=4))
    assert await _day(gw) == (0, 0)


async def test_a_cut_stream_settles_the_prompt_and_what_was_streamed(gw: EmbeddedGateway) -> None:
    seen: list[str] = []
    with pytest.raises(RatatoskrError):
        async for event in gw.chat_stream(HI, ChatOptions(model="up/cut", max_tokens=4)):
            if isinstance(event, ContentDelta):
                seen.append(event.text)
    assert "".join(seen) == "Hello"
    expected = PRICE.cost(estimate_messages(HI), estimate_tokens("Hello"))
    assert await _day(gw) == (expected, 0)


async def test_a_cancelled_stream_settles_what_it_used(upstream: Upstream, tmp_path: Path, clock: Clock) -> None:
    gw = await _gateway(upstream, tmp_path, clock, daily_usd="1")
    try:
        seen: list[str] = []
        events = gw.chat_stream(HI, ChatOptions(model="up/slow", max_tokens=1000))
        async with aclosing(events):  # type: ignore[type-var]
            async for event in events:
                if isinstance(event, ContentDelta) and event.text:
                    seen.append(event.text)
                    if len(seen) == 5:
                        break  # the consumer goes away mid-answer
        assert "".join(seen) == "0 1 2 3 4 "
        expected = PRICE.cost(estimate_messages(HI), estimate_tokens("0 1 2 3 4 "))
        assert await _day(gw) == (expected, 0)

        # A consumer task cancelled mid-stream settles too.
        async def consume() -> None:
            async for _ in gw.chat_stream(HI, ChatOptions(model="up/slow", max_tokens=1000)):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        spent, reserved = await _day(gw)
        assert reserved == 0 and expected < spent < expected + PRICE.cost(estimate_messages(HI), 1000)
    finally:
        await gw.close()


async def test_local_and_zero_priced_models_pass_an_exhausted_budget(
    upstream: Upstream, tmp_path: Path, clock: Clock
) -> None:
    gw = await _gateway(upstream, tmp_path, clock, daily_usd="0")
    try:
        with pytest.raises(ResourceExhausted):
            await gw.chat(HI, ChatOptions(model="up/m", max_tokens=4))
        assert (await gw.chat(HI, ChatOptions(model="lan/m", max_tokens=4))).usage.completion_tokens == 7
        assert (await gw.chat(HI, ChatOptions(model="up/free", max_tokens=4))).usage.completion_tokens == 7
        events = [e async for e in gw.chat_stream(HI, ChatOptions(model="lan/m"))]
        assert events
        assert await _day(gw) == (0, 0)
    finally:
        await gw.close()


async def test_an_unknown_price_blocks_by_default_and_says_how_to_declare_one(
    upstream: Upstream, tmp_path: Path, clock: Clock
) -> None:
    settings = _settings(upstream, tmp_path, daily_usd="1")
    settings["budget"]["prices"] = {}
    gw = EmbeddedGateway(load_settings(**settings))
    try:
        with pytest.raises(FailedPrecondition, match=r'\[budget.prices."up/unpriced-model"\] input_per_million'):
            await gw.chat(HI, ChatOptions(model="up/unpriced-model", max_tokens=4))
        # A catalogued model is priced from the registry (gpt-4o-mini has a price in the shipped catalogue).
        assert (await gw.chat(HI, ChatOptions(model="up/gpt-4o-mini", max_tokens=4))).usage.prompt_tokens == 12
    finally:
        await gw.close()
    settings["budget"]["unknown_price"] = "allow"
    gw = EmbeddedGateway(load_settings(**settings))
    try:
        assert (await gw.chat(HI, ChatOptions(model="up/unpriced-model", max_tokens=4))).usage.prompt_tokens == 12
    finally:
        await gw.close()


async def test_caller_model_scopes_and_the_per_request_cap(upstream: Upstream, tmp_path: Path, clock: Clock) -> None:
    gw = await _gateway(
        upstream,
        tmp_path,
        clock,
        max_request_usd="0.001",
        callers={"team-*": {"daily_usd": f"{CALL_COST}"}},
        models={"up/m*": {"monthly_usd": "1"}},
    )
    try:
        with pytest.raises(ResourceExhausted, match=r"more than budget.max_request_usd = \$0.001") as info:
            await gw.chat(HI, ChatOptions(model="up/m", max_tokens=1000))
        assert info.value.retry_after_s is None
        ctx = RequestContext.start(caller="team-a")
        await gw.gateway.chat(ctx, HI, ChatOptions(model="up/m", max_tokens=4))
        with pytest.raises(ResourceExhausted, match=r"budget caller:team-a \(day:2026-03-28"):
            await gw.gateway.chat(RequestContext.start(caller="team-a"), HI, ChatOptions(model="up/m", max_tokens=4))
        other = RequestContext.start(caller="key-b")
        other.budget_scope = "team-b"  # a key charged to another team's scope
        await gw.gateway.chat(other, HI, ChatOptions(model="up/m", max_tokens=4))
        scopes = {(b.scope, b.window.split(":")[0]): b.spent_usd for b in await gw.gateway.budget()}
        assert scopes == {
            ("caller:team-a", "day"): CALL_COST,
            ("caller:team-b", "day"): CALL_COST,
            ("model:up/m*", "month"): CALL_COST * 2,
        }
    finally:
        await gw.close()


# -- the daemon ----------------------------------------------------------------------------------


def _midday_zone() -> str:
    """A fixed-offset zone where it is around noon now: the daemon tests never straddle midnight."""
    offset = 12 - datetime.now(UTC).hour
    offset = max(min(offset, 12), -12)
    return "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"


def _ledger_spend(path: Path) -> dict[str, Decimal]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT scope || ' ' || window, nanos FROM spend").fetchall()
        assert db.execute("SELECT COUNT(*) FROM reservations").fetchone()[0] == 0
    return {key: Decimal(nanos) * Decimal("1e-9") for key, nanos in rows}


def test_200_concurrent_calls_never_overspend_and_a_restart_keeps_the_days_spend(
    upstream: Upstream, tmp_path: Path, model_root: Path
) -> None:
    limit = CALL_COST * 50
    settings = _settings(upstream, tmp_path, daily_usd=f"{limit}", timezone=_midday_zone(), warn_at=0.01)
    settings["local"] = {"model_dir": model_root, "auto_import_default": False, "preload": []}
    d = DaemonProcess(model_root, **settings).start()

    async def run() -> list[Any]:
        async with AsyncServiceClient(d.socket, timeout=60) as client:
            return await asyncio.gather(
                *(client.chat(HI, ChatOptions(model="up/m", max_tokens=16)) for _ in range(200)),
                return_exceptions=True,
            )

    try:
        # One call first over the raw stub: the warning (warn_at = 1%) travels in trailing metadata.
        with grpc.insecure_channel(f"unix:{d.socket}") as channel:
            request = gateway_pb2.ChatRequest(
                messages=[message_to_pb(m) for m in HI],
                options=chat_options_to_pb(ChatOptions(model="up/m", max_tokens=16)),
            )
            response, call = gateway_pb2_grpc.GatewayStub(channel).Chat.with_call(request, timeout=10)
        warning = dict(call.trailing_metadata() or ())[BUDGET_WARNING_KEY]
        assert warning == notes_from_pb(response.notes).budget_warning
        assert warning.startswith("global day:") and "of $0.0013 spent or reserved" in warning

        results = asyncio.run(run())
        answered = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, ResourceExhausted)]
        assert len(answered) + len(refused) == 200, [r for r in results if isinstance(r, BaseException)][:3]
        calls = len(answered) + 1
        print(f"answered {calls} of 201 under a budget of 50 calls")
        assert 30 <= calls <= 50
        assert all(r.notes.budget_warning for r in answered)
        assert all(r.retry_after_s is not None and r.retry_after_s > 0 for r in refused)
        assert all("spent $" in r.message and "limit $0.0013" in r.message for r in refused)
        with d.client(timeout=5) as client:
            (day,) = client.get_budget("global")
        assert (day.spent_usd, day.reserved_usd, day.limit_usd) == (CALL_COST * calls, 0, limit)
    finally:
        d.stop()
    # The ledger itself, after the daemon is gone: settled spend within the limit, nothing held.
    spend = _ledger_spend(tmp_path / "budget.sqlite3")
    (total,) = spend.values()
    assert total == CALL_COST * calls <= limit

    d = DaemonProcess(model_root, **settings).start()
    try:
        with d.client(timeout=5) as client:
            (day,) = client.get_budget("global")
        assert day.spent_usd == total and day.reserved_usd == 0
        assert cli_main(["budget", "--socket", str(d.socket)]) == 0
    finally:
        d.stop()


@pytest.mark.parametrize(
    ("budget", "where"),
    [
        ({"daily_usd": 1.5}, "budget.daily_usd"),
        ({"prices": {"x": {"input_per_million": 0.1, "output_per_million": "1"}}}, "budget.prices.x.input_per_million"),
        ({"callers": {"a": {"monthly_usd": 2.0}}}, "budget.callers.a.monthly_usd"),
    ],
)
def test_money_in_the_configuration_is_never_a_float(budget: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError, match=f'{where}: Value error, write money as a decimal string such as "2.50"'):
        load_settings(budget=budget)


def test_an_unknown_time_zone_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match=r"budget\.timezone: .*'Mars/Base' is not an IANA zone"):
        load_settings(budget={"timezone": "Mars/Base"})
