"""Retry, fallback chains and circuit breakers against the OpenAI double (issue 12, parts 1-3).

Time is injected: retries wait on a recording sleep that advances a fake monotonic clock, which the
breakers read too, so no test waits for a backoff or a cooldown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ratatoskr_client import Unauthenticated, Unavailable
from ratatoskr_client.client import FAILED_OVER_KEY, RETRIES_KEY
from ratatoskr_client.convert import notes_from_pb, notes_to_pb, status_from_pb, status_to_pb
from ratatoskr_client.errors import InvalidArgument, ResourceExhausted
from ratatoskr_client.types import ChatOptions, ContentDelta, Done, Message, Notes, ServerStatus
from ratatoskr_server.config import BreakerSettings, ResilienceSettings, load_settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.fronts.grpc.status import trailing_metadata
from ratatoskr_server.gateway import Gateway
from ratatoskr_server.pipeline.call import Call, ChatInput, Result
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.routing.breaker import Breakers
from ratatoskr_server.routing.retry import RetryStage
from ratatoskr_server.state.breakers import MemoryBreakers, Phase
from tests.upstreams import openai_double
from tests.upstreams.harness import Upstream, serve

HI = [Message("user", "hi")]


class FakeTime:
    """A monotonic clock that only the recorded sleeps move."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture(scope="module")
def up() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as upstream:
        yield upstream


@pytest.fixture(autouse=True)
def _fresh_counts(up: Upstream) -> None:
    up.state["calls"] = {}


def calls(up: Upstream, model: str) -> int:
    return int(up.state["calls"].get(model, 0))


def gateway(up: Upstream, time: FakeTime, **overrides: Any) -> EmbeddedGateway:
    providers = {
        "up": {"kind": "openai_compat", "base_url": f"{up.base_url}/v1", "local": True},
        # The same double as a paid API: budgets apply to it.
        "paid": {"kind": "openai_compat", "base_url": f"{up.base_url}/v1"},
    }
    settings = load_settings(local={"preload": [], "auto_import_default": False}, providers=providers, **overrides)
    return EmbeddedGateway(settings, gateway=Gateway.from_settings(settings, monotonic=time, sleep=time.sleep))


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def gw(up: Upstream, time: FakeTime) -> AsyncIterator[EmbeddedGateway]:
    gateway_ = gateway(up, time, resilience={"breaker": {"enabled": False}})
    yield gateway_
    await gateway_.close()


async def texts(events: AsyncIterator[Any]) -> tuple[str, Done]:
    text, done = "", None
    async for event in events:
        if isinstance(event, ContentDelta):
            text += event.text
        if isinstance(event, Done):
            done = event
    assert done is not None
    return text, done


# -- retry -----------------------------------------------------------------------------------------
async def test_retry_after_is_honoured_and_attempts_bound_the_retries(
    gw: EmbeddedGateway, up: Upstream, time: FakeTime
) -> None:
    with pytest.raises(ResourceExhausted):
        await gw.chat(HI, ChatOptions(model="up/rate-limited"))
    assert calls(up, "rate-limited") == 3  # resilience.attempts
    assert len(time.sleeps) == 2 and all(gap >= 3.0 for gap in time.sleeps)  # the double sends retry-after: 3


async def test_a_transient_failure_is_retried_until_it_answers(
    gw: EmbeddedGateway, up: Upstream, time: FakeTime
) -> None:
    result = await gw.chat(HI, ChatOptions(model="up/flaky-2"))
    assert result.message.content == openai_double.assembled_text()
    assert calls(up, "flaky-2") == 3
    assert len(time.sleeps) == 2 and all(0 <= gap <= 0.5 for gap in time.sleeps)  # jittered, under base * 2
    assert result.notes.retries == 2 and result.notes.failed_over == []


@pytest.mark.parametrize(("model", "error"), [("auth", Unauthenticated), ("bad-request", InvalidArgument)])
async def test_a_permanent_failure_is_never_retried(
    gw: EmbeddedGateway, up: Upstream, time: FakeTime, model: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await gw.chat(HI, ChatOptions(model=f"up/{model}"))
    assert calls(up, model) == 1
    assert time.sleeps == []


async def _unavailable(call: Call, ctx: RequestContext) -> Result:
    raise Unavailable("up: overloaded", retry_after_s=None)


async def _rate_limited(call: Call, ctx: RequestContext) -> Result:
    raise ResourceExhausted("up: slow down", retry_after_s=3.0)


@pytest.mark.parametrize("failing", [_unavailable, _rate_limited])
async def test_retries_never_sleep_past_the_deadline(failing: Any) -> None:
    time = FakeTime()
    settings = ResilienceSettings(attempts=50, backoff_base_s=1.0, backoff_max_s=4.0)
    stage = RetryStage(settings, sleep=time.sleep, jitter=lambda: 0.999)
    ctx = RequestContext.start(timeout=10.0, clock=time)
    call = Call(Capability.CHAT, "up/m", ChatInput(HI))
    with pytest.raises((Unavailable, ResourceExhausted)):
        await stage.unary(call, ctx, failing)
    assert time.sleeps, "it did retry"
    assert sum(time.sleeps) < 10.0
    assert time.now < ctx.deadline  # type: ignore[operator]


# -- the uncommitted stream ------------------------------------------------------------------------
async def test_a_stream_failing_before_its_first_content_is_retried_invisibly(
    gw: EmbeddedGateway, up: Upstream, time: FakeTime
) -> None:
    text, done = await texts(gw.chat_stream(HI, ChatOptions(model="up/early-overload-1")))
    assert text == openai_double.assembled_text()
    assert done.finish_reason == "stop"
    assert calls(up, "early-overload-1") == 2
    assert len(time.sleeps) == 1


async def test_a_stream_failing_after_its_first_content_fails_visibly(gw: EmbeddedGateway, up: Upstream) -> None:
    seen: list[str] = []
    with pytest.raises(Unavailable, match="crashed"):
        async for event in gw.chat_stream(HI, ChatOptions(model="up/midstream-error")):
            if isinstance(event, ContentDelta):
                seen.append(event.text)
    assert seen  # the caller had content: no second try could be hidden
    assert calls(up, "midstream-error") == 1


# -- fallback chains -------------------------------------------------------------------------------
@pytest.fixture
async def routed(up: Upstream, time: FakeTime) -> AsyncIterator[EmbeddedGateway]:
    routes = {
        "transient": {"candidates": ["up/unavailable", "up/gpt-test"]},
        "missing": {"candidates": ["nowhere/model", "up/gpt-test"]},
        "too-long": {"candidates": ["up/too-long", "up/gpt-test"]},
        "auth": {"candidates": ["up/auth", "up/gpt-test"]},
        "streams": {"candidates": ["up/early-overload-99", "up/gpt-test"]},
    }
    gateway_ = gateway(up, time, routes=routes, resilience={"attempts": 2, "breaker": {"enabled": False}})
    yield gateway_
    await gateway_.close()


async def test_a_route_answers_from_the_second_candidate_when_the_first_fails_transiently(
    routed: EmbeddedGateway, up: Upstream
) -> None:
    result = await routed.chat(HI, ChatOptions(model="transient"))
    assert (result.provider, result.model) == ("up", "gpt-test")
    assert calls(up, "unavailable") == 2  # its retries first
    assert calls(up, "gpt-test") == 1
    assert result.notes.failed_over == ["up/unavailable"] and result.notes.retries == 1


@pytest.mark.parametrize("route", ["missing", "too-long"])
async def test_a_route_falls_back_on_a_missing_model_and_a_too_long_input(
    routed: EmbeddedGateway, up: Upstream, route: str
) -> None:
    result = await routed.chat(HI, ChatOptions(model=route))
    assert result.model == "gpt-test"
    assert calls(up, "too-long") == (1 if route == "too-long" else 0)  # not retried


async def test_a_route_does_not_fall_back_on_a_rejected_key(routed: EmbeddedGateway, up: Upstream) -> None:
    with pytest.raises(Unauthenticated):
        await routed.chat(HI, ChatOptions(model="auth"))
    assert calls(up, "gpt-test") == 0


async def test_a_stream_fails_over_before_its_first_content(routed: EmbeddedGateway, up: Upstream) -> None:
    text, done = await texts(routed.chat_stream(HI, ChatOptions(model="streams")))
    assert text == openai_double.assembled_text()
    assert (done.provider, done.model) == ("up", "gpt-test")
    assert calls(up, "early-overload-99") == 2
    assert done.notes.failed_over == ["up/early-overload-99"]


# -- circuit breakers ------------------------------------------------------------------------------
async def test_a_breaker_opens_skips_half_opens_after_the_cooldown_and_closes_on_success(
    up: Upstream, time: FakeTime
) -> None:
    breaker = {"min_calls": 2, "failure_threshold": 0.5, "cooldown_s": 30.0, "window_s": 60.0}
    routes = {"guarded": {"candidates": ["up/flaky-2", "up/gpt-test"]}}
    gw = gateway(up, time, routes=routes, resilience={"attempts": 1, "breaker": breaker})
    try:
        for _ in range(2):
            with pytest.raises(Unavailable, match="overloaded"):
                await gw.chat(HI, ChatOptions(model="up/flaky-2"))
        phases = gw.gateway.breaker_phases()
        assert phases["up/flaky-2"] is Phase.OPEN
        with pytest.raises(Unavailable, match="circuit breaker open") as refused:
            await gw.chat(HI, ChatOptions(model="up/flaky-2"))
        assert refused.value.retry_after_s == pytest.approx(30.0)
        assert calls(up, "flaky-2") == 2  # skipped without a call
        answered = await gw.chat(HI, ChatOptions(model="guarded"))  # the route skips it too
        assert answered.model == "gpt-test" and calls(up, "flaky-2") == 2

        time.now += 30.0
        assert gw.gateway.breaker_phases()["up/flaky-2"] is Phase.HALF_OPEN
        result = await gw.chat(HI, ChatOptions(model="up/flaky-2"))  # the probe: its third call answers
        assert result.model == "flaky-2"
        assert gw.gateway.breaker_phases()["up/flaky-2"] is Phase.CLOSED
        metrics = gw.gateway.metrics.registry
        assert metrics.get_sample_value("ratatoskr_breaker_opens_total", {"target": "up/flaky-2"}) == 1
        assert metrics.get_sample_value("ratatoskr_breaker_state", {"target": "up/flaky-2"}) == 0
    finally:
        await gw.close()


def test_a_failed_probe_opens_the_breaker_again_and_probes_are_bounded() -> None:
    time = FakeTime()
    breakers = Breakers(BreakerSettings(min_calls=3, failure_threshold=0.6, cooldown_s=10.0, half_open_probes=2),
                        MemoryBreakers(), time)  # fmt: skip
    key = "p/m"
    for failed in (True, False, True):  # 2 of 3 >= 0.6
        assert breakers.admit(key)
        breakers.record(key, failed)
    assert not breakers.admit(key) and breakers.skipped(key)
    time.now += 10.0
    assert breakers.admit(key) and breakers.admit(key)
    assert not breakers.admit(key)  # two probes at once, no more
    breakers.record(key, True)
    assert breakers.phases()[key] is Phase.OPEN and not breakers.admit(key)


def test_old_failures_slide_out_of_the_window() -> None:
    time = FakeTime()
    breakers = Breakers(BreakerSettings(min_calls=2, failure_threshold=1.0, window_s=60.0), MemoryBreakers(), time)
    breakers.record("p/m", True)
    time.now += 61.0
    breakers.record("p/m", True)  # the first is out of the window: one call, under min_calls
    assert breakers.phases()["p/m"] is Phase.CLOSED
    breakers.record("p/m", True)
    assert breakers.phases()["p/m"] is Phase.OPEN


def test_retries_and_failovers_travel_in_the_wire_notes_and_trailing_metadata() -> None:
    notes = Notes(retries=2, failed_over=["up/unavailable", "up/too-long"])
    assert notes_from_pb(notes_to_pb(notes)) == notes
    ctx = RequestContext.start()
    ctx.note_retry()
    ctx.note_failover("up/unavailable")
    trailing = dict(trailing_metadata(ctx))
    assert trailing[RETRIES_KEY] == "1" and trailing[FAILED_OVER_KEY] == "up/unavailable"


async def test_an_embed_route_puts_the_local_model_first_and_a_remote_one_behind_it(
    up: Upstream, time: FakeTime
) -> None:
    routes = {"embeds": {"candidates": ["not-installed-here", "up/text-embed"]}}
    gw = gateway(up, time, routes=routes)
    try:
        result = await gw.embed(["a", "bcd"], model="embeds")
        assert result.model == "up/text-embed" and [v[0] for v in result.vectors] == [1.0, 3.0]
        assert result.notes.failed_over == ["local/not-installed-here"]
    finally:
        await gw.close()


async def test_a_route_skips_a_candidate_the_budget_cannot_cover(up: Upstream, time: FakeTime, tmp_path: Path) -> None:
    budget = {
        "ledger_path": str(tmp_path / "budget.sqlite3"),
        "daily_usd": "0.000001",  # less than one priced call
        "prices": {"paid/free": {"input_per_million": "0", "output_per_million": "0"},
                   "paid/*": {"input_per_million": "1", "output_per_million": "2"}},
    }  # fmt: skip
    routes = {"thrifty": {"candidates": ["paid/gpt-test", "paid/free"]}}
    gw = gateway(up, time, routes=routes, budget=budget)
    try:
        result = await gw.chat(HI, ChatOptions(model="thrifty", max_tokens=4))
        assert result.model == "free" and calls(up, "gpt-test") == 0
        assert result.notes.failed_over == ["paid/gpt-test"]
    finally:
        await gw.close()


def test_breakers_travel_in_the_daemon_status() -> None:
    status = ServerStatus("1", 1, 0.0, [], 0, 1, "serving", [], breakers={"up/m": "open", "up/n": "closed"})
    assert status_from_pb(status_to_pb(status)) == status
