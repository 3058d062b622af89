"""Streaming failover mid-answer (issue 12 part 4) against the OpenAI and Anthropic doubles.

The ``story`` model streams a known text and is cut after a commanded number of bytes (mid-event,
mid-UTF-8 sequence, between events); ``story-continue`` continues a prefix of it as a real model
would (exactly after a prefill; from the last word's start when asked to continue) and refuses a
prefix that is not the story's start.  So a stream is right when the caller's text is the whole
story: the first leg's text, then the second leg's with the repeated overlap removed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from ratatoskr_client import Unavailable
from ratatoskr_client._proto.ratatoskr.v1 import gateway_pb2, gateway_pb2_grpc
from ratatoskr_client.client import FAILOVER_KEY
from ratatoskr_client.convert import chat_event_from_pb, chat_event_to_pb, chat_options_to_pb, message_to_pb
from ratatoskr_client.types import (
    ChatEvent,
    ChatOptions,
    ContentDelta,
    Done,
    Failover,
    Message,
    Notes,
    UsageEvent,
)
from ratatoskr_server.config import ConfigError, load_settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.fronts.grpc.status import trailing_metadata
from ratatoskr_server.fronts.openai_http.wire import ChatChunks
from ratatoskr_server.gateway import Gateway
from ratatoskr_server.policy.budget.pricing import Price
from ratatoskr_server.policy.templates.render import estimate_messages, estimate_tokens
from ratatoskr_server.providers.scrub import Scrubber
from ratatoskr_server.routing.seam import join
from tests.conftest import DaemonProcess
from tests.upstreams import anthropic_double, openai_double, story
from tests.upstreams.harness import Upstream, serve

ASK = [Message("user", "Tell me the story of Ratatoskr.")]
#: Routes: (first candidate's wire, route name); the second candidate continues by prompt or prefill.
ROUTES = {
    "oa-prompt": ["oa/story", "oa/story-continue"],
    "oa-prefill": ["oa/story", "vllm/story-continue"],
    "an-prefill": ["an/story", "an/story-continue"],
    "an-to-oa": ["an/story", "oa/story-continue"],
    "oa-to-an": ["oa/story", "an/story-continue"],
}
STREAMS = 1000
AN_KEY = "sk-ant-api03-failover-test-key"


@pytest.fixture(scope="module")
def oa() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def an() -> Iterator[Upstream]:
    with serve(anthropic_double.routes(api_key=AN_KEY)) as upstream:
        yield upstream


def providers(oa: Upstream, an: Upstream) -> dict[str, Any]:
    return {
        "oa": {"kind": "openai_compat", "base_url": f"{oa.base_url}/v1", "local": True},
        # The same double as a vLLM server: it continues a trailing assistant message (prefill).
        "vllm": {"kind": "openai_compat", "base_url": f"{oa.base_url}/v1", "local": True},
        "an": {"kind": "anthropic", "base_url": f"{an.base_url}/v1", "api_key": AN_KEY, "local": True},
        # The same double as a llama.cpp/TGI server whose chat goes through /completions.
        "raw": {
            "kind": "openai_compat",
            "base_url": f"{oa.base_url}/v1",
            "local": True,
            "completion_only": ["story-raw"],
        },
        # Declared unable to continue another model's answer (failover.continuation: none).
        "never": {"kind": "openai_compat", "base_url": f"{oa.base_url}/v1", "local": True},
    }


def overrides(oa: Upstream, an: Upstream) -> dict[str, Any]:
    return {
        "providers": providers(oa, an),
        # The doubles are declared local servers, so 16 streams at once would reach spillover's default
        # spill_at (10) and go to the second candidate first: this file tests failover, not spilling.
        "routes": {name: {"candidates": c, "spill_at": 1000, "reject_at": 1000} for name, c in ROUTES.items()}
        | {
            "tools": {"candidates": ["oa/story-tools", "oa/story-continue"]},
            "nowhere": {"candidates": ["oa/story", "never/story-continue"]},
            "thinking": {"candidates": ["oa/story-reasoning", "oa/story-continue"]},
            "raw": {"candidates": ["oa/story", "raw/story-raw"]},
        },
        "failover": {"continuation": {"vllm": "prefill", "never": "none"}},
        "templates": {"sources": {"raw/story-raw": "chatml"}},
        # Every cut is a failure of the first candidate: a breaker would soon skip it (test_resilience's).
        "resilience": {"attempts": 1, "breaker": {"enabled": False}},
    }


@pytest.fixture
async def gw(oa: Upstream, an: Upstream) -> AsyncIterator[EmbeddedGateway]:
    settings = load_settings(local={"preload": [], "auto_import_default": False}, **overrides(oa, an))
    gateway = EmbeddedGateway(settings, gateway=Gateway.from_settings(settings))
    yield gateway
    await gateway.close()


@dataclass(frozen=True)
class Cut:
    route: str
    at: int
    kind: str
    #: The text of the events wholly before the cut, as the caller must have received it: less a tail
    #: that could be the start of the provider's key (the scrubber holds that back until it knows).
    delivered: str


def wire_events(route: str) -> list[tuple[bytes, str]]:
    double = openai_double if ROUTES[route][0].startswith("oa/") else anthropic_double
    return double.story_events("story")


def cuts(rng: random.Random, count: int) -> list[Cut]:
    """Byte offsets after the first content event (so content was sent) and up to the last one's end."""
    out: list[Cut] = []
    names = sorted(ROUTES)
    kinds = ("between-events", "mid-utf8", "anywhere")
    for n in range(count):
        route, kind = names[n % len(names)], kinds[(n // len(names)) % len(kinds)]
        events = wire_events(route)
        ends, texts, offset = [], [], 0
        for raw, text in events:
            offset += len(raw)
            ends.append(offset)
            texts.append(text)
        content = [i for i, t in enumerate(texts) if t]
        low, high = ends[content[0]], ends[content[-1]]
        whole = b"".join(raw for raw, _ in events)
        if kind == "between-events":
            at = ends[rng.choice(content[1:])]
        elif kind == "mid-utf8":  # a continuation byte: the cut splits a multi-byte character
            at = rng.choice([p for p in range(low + 1, high) if whole[p] & 0xC0 == 0x80])
        else:
            at = rng.randrange(low + 1, high + 1)
        delivered = "".join(t for end, t in zip(ends, texts, strict=True) if end <= at)
        if ROUTES[route][0].startswith("an/"):
            delivered = Scrubber([AN_KEY]).release(delivered)[0]
        out.append(Cut(route, at, kind, delivered))
    return out


def second_leg(cut: Cut) -> str:
    """What the continuing model writes (before the gateway removes the overlap)."""
    target = ROUTES[cut.route][1]
    if target.startswith("vllm/"):
        return story.STORY[len(cut.delivered) :]
    if target.startswith("an/"):  # a prefill, less its trailing whitespace (the API refuses it)
        return story.STORY[len(cut.delivered.rstrip()) :]
    return story.STORY[story.restart(cut.delivered) :]


async def run(gw: EmbeddedGateway, cut: Cut) -> list[ChatEvent]:
    options = ChatOptions(model=cut.route, raw_provider_options={story.CUT_FIELD: cut.at})
    return [event async for event in gw.chat_stream(ASK, options)]


def check(cut: Cut, events: list[ChatEvent]) -> None:
    failovers = [i for i, e in enumerate(events) if isinstance(e, Failover)]
    assert len(failovers) == 1, cut
    seam = failovers[0]
    before = "".join(e.text for e in events[:seam] if isinstance(e, ContentDelta))
    after = "".join(e.text for e in events[seam:] if isinstance(e, ContentDelta))
    event = events[seam]
    assert isinstance(event, Failover)
    first, second = ROUTES[cut.route]
    assert (event.from_candidate, event.to_candidate, event.at_char) == (first, second, len(cut.delivered)), cut
    assert before == cut.delivered, cut
    prefill = not second.startswith("oa/")
    assert before + after == join(cut.delivered, second_leg(cut), 64, whitespace_only=prefill), cut
    assert before + after == story.STORY, cut
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "stop", cut
    assert done.notes.failovers == [event] and done.notes.failed_over == [first]


async def test_a_thousand_streams_cut_anywhere_complete_seamlessly(gw: EmbeddedGateway, oa: Upstream) -> None:
    planned = cuts(random.Random(20261202), STREAMS)
    assert {c.kind for c in planned} == {"between-events", "mid-utf8", "anywhere"}
    assert sum(1 for c in planned if c.delivered and not c.delivered[-1].isspace()) > STREAMS // 2  # mid-word
    limit = asyncio.Semaphore(16)

    async def one(cut: Cut) -> None:
        async with limit:
            check(cut, await run(gw, cut))

    async with asyncio.TaskGroup() as group:  # the first failure cancels the rest
        for cut in planned:
            group.create_task(one(cut))


async def test_usage_covers_both_legs(gw: EmbeddedGateway) -> None:
    cut = cuts(random.Random(7), 1)[0]
    events = await run(gw, cut)
    usage = [e.usage for e in events if isinstance(e, UsageEvent)]
    assert len(usage) == 1
    leg1 = -(-len(cut.delivered) // 4)  # the cut leg reported nothing: its text, estimated
    assert usage[0].completion_tokens == story.CONTINUE_USAGE["completion_tokens"] + leg1
    assert usage[0].prompt_tokens == story.CONTINUE_USAGE["prompt_tokens"]
    done = events[-1]
    assert isinstance(done, Done) and done.timing.output_tokens == usage[0].completion_tokens


async def test_the_budget_settles_both_legs(oa: Upstream, an: Upstream, tmp_path: Path) -> None:
    """The broken leg is charged its prompt and the text it streamed; the new one what it reports."""
    price = {"input_per_million": "1", "output_per_million": "2"}
    settings = load_settings(
        local={"preload": [], "auto_import_default": False},
        providers={"paid": {"kind": "openai_compat", "base_url": f"{oa.base_url}/v1"}},
        routes={"paid": {"candidates": ["paid/story", "paid/story-continue"]}},
        budget={"ledger_path": str(tmp_path / "budget.sqlite3"), "daily_usd": "1", "prices": {"paid/*": price}},
        resilience={"attempts": 1, "breaker": {"enabled": False}},
    )
    gw = EmbeddedGateway(settings, gateway=Gateway.from_settings(settings))
    try:
        at = sum(len(raw) for raw, _ in openai_double.story_events("story")[:9]) - 5
        options = ChatOptions(model="paid", raw_provider_options={story.CUT_FIELD: at}, max_tokens=500)
        events = [event async for event in gw.chat_stream(ASK, options)]
        seam = next(i for i, e in enumerate(events) if isinstance(e, Failover))
        delivered = "".join(e.text for e in events[:seam] if isinstance(e, ContentDelta))
        (day,) = [b for b in await gw.gateway.budget() if b.window.startswith("day:")]
    finally:
        await gw.close()
    rate = Price(Decimal(1), Decimal(2))
    broken = rate.cost(estimate_messages(ASK), estimate_tokens(delivered))
    continued = rate.cost(story.CONTINUE_USAGE["prompt_tokens"], story.CONTINUE_USAGE["completion_tokens"])
    assert delivered and (day.spent_usd, day.reserved_usd) == (broken + continued, 0)


async def test_a_stream_cut_inside_a_tool_call_fails_with_its_status(gw: EmbeddedGateway, oa: Upstream) -> None:
    oa.state["continued"] = []
    seen: list[ChatEvent] = []
    with pytest.raises(Unavailable, match=r"not resumed: the partial answer holds a tool call"):
        async for event in gw.chat_stream(ASK, ChatOptions(model="tools")):
            seen.append(event)
    assert any(isinstance(e, ContentDelta) for e in seen) and not any(isinstance(e, Failover) for e in seen)
    assert oa.state["continued"] == []  # no other model was asked to continue it


async def test_a_stream_that_showed_reasoning_fails_with_its_status(gw: EmbeddedGateway, oa: Upstream) -> None:
    oa.state["continued"] = []
    at = sum(len(raw) for raw, _ in openai_double.story_events("story-reasoning")[:12])
    options = ChatOptions(model="thinking", raw_provider_options={story.CUT_FIELD: at})
    with pytest.raises(Unavailable, match=r"not resumed: the partial answer holds reasoning"):
        async for _ in gw.chat_stream(ASK, options):
            pass
    assert oa.state["continued"] == []


async def test_a_completion_only_target_continues_through_its_chat_template(gw: EmbeddedGateway, oa: Upstream) -> None:
    oa.state["continued"] = []
    at = sum(len(raw) for raw, _ in openai_double.story_events("story")[:15]) - 3
    events = await run(gw, Cut("raw", at, "anywhere", ""))
    seam = next(i for i, e in enumerate(events) if isinstance(e, Failover))
    delivered = "".join(e.text for e in events[:seam] if isinstance(e, ContentDelta))
    assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == story.STORY
    event = events[seam]
    assert isinstance(event, Failover) and (event.to_candidate, event.at_char) == ("raw/story-raw", len(delivered))
    assert oa.state["continued"] == [(delivered, True)]  # the rendered prompt, the answer so far appended
    prompt = next(r.body["prompt"] for r in oa.requests if r.path == "/v1/completions")
    assert prompt.endswith(openai_double.CHATML_ASSISTANT + delivered) and ASK[0].content in prompt


async def test_a_request_can_opt_out_and_a_target_can_be_declared_unable(gw: EmbeddedGateway, oa: Upstream) -> None:
    oa.state["continued"] = []
    cut = cuts(random.Random(3), 1)[0]
    options = ChatOptions(model=cut.route, raw_provider_options={story.CUT_FIELD: cut.at}, stream_failover=False)
    with pytest.raises(Unavailable, match="ended before the answer was complete"):
        async for _ in gw.chat_stream(ASK, options):
            pass
    with pytest.raises(Unavailable, match="no later candidate can continue"):
        async for _ in gw.chat_stream(ASK, ChatOptions(model="nowhere", raw_provider_options={story.CUT_FIELD: 600})):
            pass
    assert oa.state["continued"] == []


@pytest.mark.parametrize(
    ("delivered", "continued", "prefill", "joined"),
    [
        ("Hello wor", "world!", False, "Hello world!"),  # the cut word restarted
        ("Hello ", "Hello world", False, "Hello world"),  # the last word restarted
        ("Hello ", "world", False, "Hello world"),  # no repeat: the seam's space kept
        ("se", "e you", False, "see you"),  # a repeat never starts mid-word
        ("Grüße 🐿", "🐿️ und", False, "Grüße 🐿️ und"),  # by code point: the squirrel and its selector
        ("Hello\n\n", "\nWorld", True, "Hello\n\nWorld"),  # a prefill without its trailing whitespace
        ("bana", "na", True, "banana"),  # after a prefill only whitespace repeats
        ("x" * 100 + " abc", "x" * 100 + " abcd", False, "x" * 100 + " abc" + "x" * 100 + " abcd"),  # bounded
    ],
)
def test_the_seam_drops_only_what_the_new_leg_repeats(
    delivered: str, continued: str, prefill: bool, joined: str
) -> None:
    assert join(delivered, continued, 64, whitespace_only=prefill) == joined


def test_continuation_modes_are_checked_in_the_configuration() -> None:
    with pytest.raises(ConfigError, match=r"failover.continuation.oa: Input should be 'prefill', 'prompt' or 'none'"):
        load_settings(failover={"continuation": {"oa": "telepathy"}})


def test_the_failover_event_and_notes_travel_on_every_wire() -> None:
    event = Failover("oa/story", "an/story-continue", 42, "oa: the stream ended before the answer was complete")
    assert chat_event_from_pb(chat_event_to_pb(event)) == event
    ctx = RequestContext.start()
    ctx.note_resumed(event)
    assert ctx.notes == Notes(failovers=[event])
    assert dict(trailing_metadata(ctx))[FAILOVER_KEY] == "oa/story->an/story-continue@42"
    assert ChatChunks("r", "m", include_usage=True).chunks(event) == []  # the HTTP front sends nothing for it
    pb = chat_options_to_pb(ChatOptions(stream_failover=False))
    assert pb.HasField("stream_failover") and not chat_options_to_pb(ChatOptions()).HasField("stream_failover")


def test_streams_fail_over_through_the_daemon(model_root: Path, oa: Upstream, an: Upstream) -> None:
    daemon = DaemonProcess(model_root, local={"preload": []}, **overrides(oa, an)).start()
    try:
        planned = cuts(random.Random(11), 5)
        with daemon.client(timeout=30) as client:
            for cut in planned:
                options = ChatOptions(model=cut.route, raw_provider_options={story.CUT_FIELD: cut.at})
                check(cut, list(client.chat_stream(ASK, options)))
        cut = planned[0]
        with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            options = chat_options_to_pb(ChatOptions(model=cut.route, raw_provider_options={story.CUT_FIELD: cut.at}))
            request = gateway_pb2.ChatRequest(messages=[message_to_pb(m) for m in ASK], options=options)
            call = stub.ChatStream(request, timeout=30)
            kinds = [pb.WhichOneof("event") for pb in call]
            trailing = dict(call.trailing_metadata() or ())
        assert kinds.count("failover") == 1 and kinds[-1] == "done"
        assert trailing[FAILOVER_KEY] == f"{ROUTES[cut.route][0]}->{ROUTES[cut.route][1]}@{len(cut.delivered)}"
    finally:
        daemon.stop()
