"""Configured secrets are cut out of answers, model ids and streams, also when split across deltas."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterable
from dataclasses import fields

import pytest

from ratatoskr_client import Unavailable
from ratatoskr_client.types import (
    ChatEvent,
    ChatResult,
    ContentDelta,
    Done,
    GenerateResult,
    Message,
    ReasoningDelta,
    Timing,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
    UsageEvent,
)
from ratatoskr_server.config import ProviderSettings
from ratatoskr_server.providers.scrub import MIN_SECRET_CHARS, REDACTED, Scrubber, scrub_events
from ratatoskr_server.redact import MASK, scrub

#: Looks like nothing in particular: only being configured makes it a secret.
PASSPHRASE = "correct-horse-battery-staple-42"
KEY = "sk-live-0123456789abcdefghijklmn"
SCRUBBER = Scrubber([PASSPHRASE, KEY])


async def _feed(events: Iterable[ChatEvent]) -> AsyncIterator[ChatEvent]:
    for event in events:
        yield event


async def _run(events: Iterable[ChatEvent], scrubber: Scrubber = SCRUBBER) -> list[ChatEvent]:
    return [e async for e in scrub_events(_feed(events), scrubber)]


def _joined(events: Iterable[ChatEvent], kind: type[ContentDelta | ReasoningDelta]) -> str:
    return "".join(e.text for e in events if isinstance(e, kind))


def _arguments(events: Iterable[ChatEvent], index: int) -> str:
    return "".join(e.arguments for e in events if isinstance(e, ToolCallDelta) and e.index == index)


def _leaks(events: Iterable[ChatEvent], secret: str) -> bool:
    return any(secret in repr(e) for e in events)


# -- text ---------------------------------------------------------------------------------------------


def test_configured_values_are_replaced_wherever_they_occur() -> None:
    text = f"key {KEY}, again {KEY}; phrase:{PASSPHRASE}."
    assert SCRUBBER.scrub(text) == f"key {REDACTED}, again {REDACTED}; phrase:{REDACTED}."


def test_a_secret_containing_another_is_replaced_whole() -> None:
    settings = ProviderSettings(kind="openai_compat", base_url="https://alice:hunter2-hunter2@llm.example/v1")
    scrubber = Scrubber(settings.secret_values())  # "alice:hunter2-hunter2" and "hunter2-hunter2"
    assert scrubber.scrub("as alice:hunter2-hunter2 or hunter2-hunter2") == f"as {REDACTED} or {REDACTED}"


def test_short_and_empty_values_are_ignored_and_counted() -> None:
    """A credential-named header carrying "basic" must not turn every "basic" in an answer into a marker."""
    short = "x" * (MIN_SECRET_CHARS - 1)
    just_long_enough = "y" * MIN_SECRET_CHARS
    scrubber = Scrubber(["", "basic", short, just_long_enough])
    assert scrubber.ignored == 2  # "" is no value at all
    assert scrubber.scrub(f"basic auth, {short}, {just_long_enough}") == f"basic auth, {short}, {REDACTED}"
    assert not Scrubber(["", "basic"]) and SCRUBBER


def test_only_configured_values_never_key_shapes() -> None:
    """Unlike the log redactor: an answer explaining key formats is the caller's data, not a leak."""
    text = "An OpenAI key looks like sk-abcdefghijklmnopqrstuvwx; send it as Bearer abcdefghijkl."
    assert SCRUBBER.scrub(text) == text
    assert MASK in scrub(text)  # the log redactor masks the same text: the difference is deliberate


def test_json_escaped_spellings_are_replaced() -> None:
    """Tool call arguments are JSON text: a quote or a non-ASCII letter in a secret arrives escaped."""
    secret = 'pa"ss\\wörd-1234'
    scrubber = Scrubber([secret])
    assert scrubber.scrub('{"password": "pa\\"ss\\\\wörd-1234"}') == f'{{"password": "{REDACTED}"}}'
    assert scrubber.scrub('{"password": "pa\\"ss\\\\w\\u00f6rd-1234"}') == f'{{"password": "{REDACTED}"}}'
    assert scrubber.scrub(secret) == REDACTED


def test_the_scrubber_never_shows_its_secrets() -> None:
    assert PASSPHRASE not in repr(SCRUBBER) and KEY not in str(SCRUBBER)


# -- results --------------------------------------------------------------------------------------------


def test_chat_result_every_upstream_text_is_scrubbed_the_rest_kept() -> None:
    usage, timing = Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7), Timing(total_ms=12.5)
    result = ChatResult(
        message=Message(
            "assistant",
            f"Your key is {KEY}.",
            tool_calls=[ToolCall(f"call-{PASSPHRASE}", f"fn_{PASSPHRASE}", f'{{"k": "{KEY}"}}')],
        ),
        finish_reason="stop",
        usage=usage,
        timing=timing,
        provider="openai",
        model=f"ft:{PASSPHRASE}",
        reasoning=f"they sent {PASSPHRASE}",
    )
    scrubbed = SCRUBBER.chat_result(result)
    assert scrubbed.message == Message(
        "assistant",
        f"Your key is {REDACTED}.",
        tool_calls=[ToolCall(f"call-{REDACTED}", f"fn_{REDACTED}", f'{{"k": "{REDACTED}"}}')],
    )
    assert scrubbed.reasoning == f"they sent {REDACTED}" and scrubbed.model == f"ft:{REDACTED}"
    assert (scrubbed.usage, scrubbed.timing, scrubbed.provider, scrubbed.finish_reason) == (
        usage,
        timing,
        "openai",
        "stop",
    )
    assert PASSPHRASE not in repr(scrubbed) and KEY not in repr(scrubbed)


def test_a_clean_result_comes_back_equal_and_fields_are_not_lost() -> None:
    result = ChatResult(Message("assistant", "hello"), "stop", Usage(total_tokens=2), Timing(total_ms=1.0), "p", "m")
    assert SCRUBBER.chat_result(result) == result
    for name in (f.name for f in fields(ChatResult)):  # a field added later survives (dataclasses.replace)
        assert getattr(SCRUBBER.chat_result(result), name) == getattr(result, name)
    assert Scrubber([]).chat_result(result) is result


def test_generate_result_and_model_ids() -> None:
    result = GenerateResult(f"echo {KEY}", "length", Usage(total_tokens=5), provider="p", model=f"m-{PASSPHRASE}")
    scrubbed = SCRUBBER.generate_result(result)
    assert (scrubbed.text, scrubbed.model, scrubbed.finish_reason, scrubbed.usage) == (
        f"echo {REDACTED}",
        f"m-{REDACTED}",
        "length",
        Usage(total_tokens=5),
    )
    ids = ["gpt-test", f"deploy-{KEY}", "tools", KEY]
    assert SCRUBBER.model_ids(ids) == ["gpt-test", f"deploy-{REDACTED}", "tools", REDACTED]


# -- release: the hold-back rule itself ------------------------------------------------------------------


def test_release_holds_back_only_what_could_start_a_secret() -> None:
    assert SCRUBBER.release("hello world") == ("hello world", "")
    assert SCRUBBER.release("hello corr") == ("hello ", "corr")
    assert SCRUBBER.release(f"a {PASSPHRASE} b") == (f"a {REDACTED} b", "")
    ready, tail = SCRUBBER.release("x" * 100 + KEY[:-1])  # the longest secret, all but its last character
    assert ready == "x" * 100 and tail == KEY[:-1]
    assert len(tail) == SCRUBBER.longest - 1


def test_a_secret_ending_the_way_one_starts_is_not_sent_twice() -> None:
    """The end of a whole secret ("…tick") can look like the start of the next: it is already replaced."""
    scrubber = Scrubber(["tick-tock-tick"])
    assert scrubber.release("xx tick-tock-tick") == (f"xx {REDACTED}", "")
    assert scrubber.release("xx tick-tock-tick-tock-t") == (f"xx {REDACTED}-tock-", "t")


def test_release_then_scrub_of_the_tail_is_scrub_of_the_whole() -> None:
    """Chunked any way at all, the released text plus the scrubbed last tail is exactly ``scrub``."""
    rng = random.Random(20240611)
    alphabet = "abcors-2 " + PASSPHRASE[:6] + KEY[:5]  # letters secrets start with, to tempt false holds
    for _ in range(400):
        parts = [rng.choice([PASSPHRASE, KEY, PASSPHRASE[: rng.randrange(1, 20)]]) for _ in range(rng.randrange(4))]
        parts += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(12))) for _ in range(3)]
        rng.shuffle(parts)
        text = "".join(parts)
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randrange(1, 8))))
        sent, tail = "", ""
        for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True):
            ready, tail = SCRUBBER.release(tail + text[a:b])
            assert len(tail) <= SCRUBBER.longest - 1
            sent += ready
        assert sent + SCRUBBER.scrub(tail) == SCRUBBER.scrub(text), text


# -- streams ---------------------------------------------------------------------------------------------


async def test_a_secret_split_across_content_deltas_is_caught() -> None:
    pieces = ["Your key is ", KEY[:3], KEY[3:11], KEY[11:], " — keep it safe."]
    out = await _run([*map(ContentDelta, pieces), Done("stop")])
    assert _joined(out, ContentDelta) == f"Your key is {REDACTED} — keep it safe."
    assert not _leaks(out, KEY) and not any(KEY[3:11] in repr(e) for e in out)
    assert out[-1] == Done("stop")


async def test_split_secrets_in_reasoning_and_interleaved_tool_arguments() -> None:
    events: list[ChatEvent] = [
        ReasoningDelta("the user gave "),
        ReasoningDelta(PASSPHRASE[:10]),
        ReasoningDelta(PASSPHRASE[10:] + " earlier"),
        ToolCallStart(0, "call_a", "login"),
        ToolCallStart(1, "call_b", "audit"),
        ToolCallDelta(0, '{"password": "' + PASSPHRASE[:5]),
        ToolCallDelta(1, '{"key": "' + KEY[:20]),  # another call between the halves of each secret
        ToolCallDelta(0, PASSPHRASE[5:] + '"}'),
        ToolCallDelta(1, KEY[20:] + '"}'),
        ToolCallEnd(0),
        ToolCallEnd(1),
        Done("tool_calls"),
    ]
    out = await _run(events)
    assert _joined(out, ReasoningDelta) == f"the user gave {REDACTED} earlier"
    assert _arguments(out, 0) == f'{{"password": "{REDACTED}"}}'
    assert _arguments(out, 1) == f'{{"key": "{REDACTED}"}}'
    assert not _leaks(out, PASSPHRASE) and not _leaks(out, KEY)
    assert [e for e in out if not isinstance(e, (ReasoningDelta, ToolCallDelta))] == events[3:5] + events[9:]


async def test_a_stream_without_secrets_passes_through_unchanged_and_in_order() -> None:
    events: list[ChatEvent] = [
        *map(ContentDelta, ["Hel", "lo", ", wor", "ld", "! ", "Ünï", "cødé ✓"]),
        ReasoningDelta("thinking..."),
        ToolCallStart(0, "call_a", "weather"),
        *(ToolCallDelta(0, a) for a in ['{"ci', 'ty": "Pa', 'ris", "unit', '": "celsius"}']),
        ToolCallEnd(0),
        UsageEvent(Usage(prompt_tokens=12, completion_tokens=7, total_tokens=19)),
        Done("stop", Timing(total_ms=3.0), provider="openai", model="gpt-test"),
    ]
    out = await _run(events)
    assert out == events
    assert all(a is b for a, b in zip(out, events, strict=True))  # the same objects: nothing rebuilt


async def test_held_text_is_sent_before_the_next_non_delta_event() -> None:
    """A tail that looked like the start of a secret keeps its place before the event that follows it."""
    events: list[ChatEvent] = [
        ContentDelta("see co"),
        ToolCallStart(0, "c1", "f"),
        ToolCallDelta(0, '{"a": "sk-li'),
        ToolCallEnd(0),
        ContentDelta("and "),
        ReasoningDelta("hmm sk"),
        UsageEvent(Usage(total_tokens=1)),
        ContentDelta("final corr"),
        Done("stop"),
    ]
    out = await _run(events)
    assert out == [
        ContentDelta("see "),
        ContentDelta("co"),
        ToolCallStart(0, "c1", "f"),
        ToolCallDelta(0, '{"a": "'),
        ToolCallDelta(0, "sk-li"),
        ToolCallEnd(0),
        ContentDelta("and "),
        ReasoningDelta("hmm "),
        ReasoningDelta("sk"),
        UsageEvent(Usage(total_tokens=1)),
        ContentDelta("final "),
        ContentDelta("corr"),
        Done("stop"),
    ]


async def test_text_is_released_as_soon_as_it_cannot_be_a_secret() -> None:
    """Holding back is per character, not per delta: a reader gets what is safe before the next delta."""
    pulled: list[int] = []

    async def upstream() -> AsyncIterator[ChatEvent]:
        for i, text in enumerate(["Hello " + KEY[:6], KEY[6:] + " bye", " see"]):
            pulled.append(i)
            yield ContentDelta(text)

    stream = scrub_events(upstream(), SCRUBBER)
    assert await anext(stream) == ContentDelta("Hello ") and pulled == [0]
    assert await anext(stream) == ContentDelta(f"{REDACTED} bye") and pulled == [0, 1]
    assert [e async for e in stream] == [ContentDelta(" see")]


async def test_the_tail_is_flushed_at_the_end_even_without_done() -> None:
    """Scrubbed exactly as a unary answer would be: an unfinished secret is not a secret we know."""
    out = await _run([ContentDelta("x" * 40 + PASSPHRASE[:-1])])
    assert out == [ContentDelta("x" * 40), ContentDelta(PASSPHRASE[:-1])]


async def test_non_delta_events_are_scrubbed_too() -> None:
    out = await _run([ToolCallStart(0, f"id-{KEY}", f"fn-{PASSPHRASE}"), Done("stop", model=f"ft:{PASSPHRASE}")])
    assert out == [ToolCallStart(0, f"id-{REDACTED}", f"fn-{REDACTED}"), Done("stop", model=f"ft:{REDACTED}")]


async def test_a_stream_error_still_propagates_and_the_held_tail_is_dropped() -> None:
    async def failing() -> AsyncIterator[ChatEvent]:
        yield ContentDelta("partial answer " + KEY[:8])
        raise Unavailable("openai: upstream worker crashed")

    seen: list[ChatEvent] = []
    with pytest.raises(Unavailable, match="worker crashed"):
        async for event in scrub_events(failing(), SCRUBBER):
            seen.append(event)
    assert seen == [ContentDelta("partial answer ")]  # the held start of the key never left


async def test_closing_the_scrubbed_stream_closes_the_upstream_stream() -> None:
    closed: list[bool] = []

    async def upstream() -> AsyncIterator[ChatEvent]:
        try:
            while True:
                yield ContentDelta("more ")
        finally:
            closed.append(True)

    stream = scrub_events(upstream(), SCRUBBER)
    assert await anext(stream) == ContentDelta("more ")
    await stream.aclose()
    assert closed == [True]


async def test_no_secrets_means_no_change_at_all() -> None:
    events: list[ChatEvent] = [ContentDelta(KEY[:5]), ContentDelta(KEY[5:]), Done("stop", model=KEY)]
    out = await _run(events, Scrubber(["", "short"]))
    assert all(a is b for a, b in zip(out, events, strict=True)) and len(out) == len(events)


async def test_random_streams_match_scrub_of_each_segment() -> None:
    """Per channel, the text between two non-delta events is exactly ``scrub`` of what the upstream sent."""
    rng = random.Random(7)
    for _ in range(150):
        secrets_and_text = [PASSPHRASE, KEY, "plain text ", "co", "sk-", "ok. "]
        events: list[ChatEvent] = []
        for _ in range(rng.randrange(1, 5)):  # segments, each ended by a non-delta event
            for channel in rng.sample(["content", "reasoning", "tool"], rng.randrange(1, 4)):
                text = "".join(rng.choice(secrets_and_text) for _ in range(rng.randrange(1, 5)))
                cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randrange(4))))
                for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True):
                    piece = text[a:b]
                    events.append(
                        ContentDelta(piece)
                        if channel == "content"
                        else ReasoningDelta(piece)
                        if channel == "reasoning"
                        else ToolCallDelta(0, piece)
                    )
            events.append(UsageEvent(Usage(total_tokens=len(events))))
        out = await _run(events)
        assert not _leaks(out, PASSPHRASE) and not _leaks(out, KEY)
        assert [e for e in out if isinstance(e, UsageEvent)] == [e for e in events if isinstance(e, UsageEvent)]
        for got, sent in zip(_segments(out), _segments(events), strict=True):
            assert _joined(got, ContentDelta) == SCRUBBER.scrub(_joined(sent, ContentDelta))
            assert _joined(got, ReasoningDelta) == SCRUBBER.scrub(_joined(sent, ReasoningDelta))
            assert _arguments(got, 0) == SCRUBBER.scrub(_arguments(sent, 0))


def _segments(events: list[ChatEvent]) -> list[list[ChatEvent]]:
    """The events split at each UsageEvent (the segments' ends)."""
    out: list[list[ChatEvent]] = [[]]
    for event in events:
        if isinstance(event, UsageEvent):
            out.append([])
        else:
            out[-1].append(event)
    return out
