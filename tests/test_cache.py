"""The response cache: exact-match keys, per-item embeddings and NLI, opt-in deterministic chat, replayed
streams, TTL and the byte bound — with the real local model, the OpenAI double and a real daemon.

What reached a model is counted where it arrives: the local batcher's rows and the double's
recorded requests, so "served from the cache" is proven by work not done, not by a flag.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ratatoskr_client._proto.ratatoskr.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2
from ratatoskr_client.client import CACHE_KEY
from ratatoskr_client.errors import InvalidArgument
from ratatoskr_client.types import ChatOptions, ContentDelta, Done, Message
from ratatoskr_server.config import load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.gateway import Gateway
from ratatoskr_server.state.cache import ENTRY_OVERHEAD, MemoryResponseCache
from ratatoskr_server.store.files import CONTENT_FILE
from ratatoskr_server.store.store import hash_folder
from tests.conftest import MODEL, TINY_NLI, DaemonProcess
from tests.upstreams import openai_double
from tests.upstreams.harness import Upstream, serve

HELLO = [Message(role="user", content="hello")]
DETERMINISTIC = ChatOptions(model="openai/gpt-4o", temperature=0, seed=7)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as up:
        yield up


def _settings(model_root: Path, upstream: Upstream, **cache: Any) -> dict[str, Any]:
    return {
        "local": {"model_dir": model_root, "auto_import_default": False, "preload": []},
        "providers": {"openai": {"kind": "openai_compat", "base_url": f"{upstream.base_url}/v1"}},
        "cache": {"enabled": True, **cache},
    }


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryResponseCache:
    return MemoryResponseCache(ttl_s=60, max_bytes=8 * 1024 * 1024, clock=clock)


async def _gateway(model_root: Path, upstream: Upstream, store: MemoryResponseCache, **cache: Any) -> EmbeddedGateway:
    settings = load_settings(**_settings(model_root, upstream, **cache))
    return EmbeddedGateway(settings, gateway=Gateway.from_settings(settings, cache=store))


@pytest.fixture
async def gw(model_root: Path, upstream: Upstream, store: MemoryResponseCache) -> AsyncIterator[EmbeddedGateway]:
    g = await _gateway(model_root, upstream, store, chat=True)
    yield g
    await g.close()


def _rows(gw: EmbeddedGateway) -> int:
    """Inputs the local model has run so far."""
    slot = gw.pool._slots[MODEL]
    assert slot.model is not None
    return slot.model.batcher.stats.rows_run


def _sent(upstream: Upstream, path: str) -> list[Any]:
    return [r.body for r in upstream.requests if r.path.endswith(path)]


# -- the store --------------------------------------------------------------------------------------
async def test_entries_expire_after_their_ttl_on_the_injected_clock(store: MemoryResponseCache, clock: Clock) -> None:
    await store.put_many([("k", b"v")])
    clock.now += 59.9
    assert await store.get_many(["k"]) == [b"v"]
    clock.now += 0.2
    assert await store.get_many(["k"]) == [None]
    assert len(store) == 0 and store.bytes == 0


async def test_the_byte_bound_evicts_the_least_recently_used(clock: Clock) -> None:
    entry = len("a") + 100 + ENTRY_OVERHEAD
    store = MemoryResponseCache(ttl_s=60, max_bytes=3 * entry, clock=clock)
    await store.put_many([(k, bytes(100)) for k in "abc"])
    assert await store.get_many(["a"]) == [bytes(100)]  # "a" is now the most recent; "b" the least
    await store.put_many([("d", bytes(100))])
    assert [v is not None for v in await store.get_many(list("abcd"))] == [True, False, True, True]
    assert store.bytes <= store.max_bytes and store.evictions == 1
    await store.put_many([("huge", bytes(4 * entry))])  # larger than the whole cache: not kept, nothing evicted
    assert await store.get_many(["huge"]) == [None] and len(store) == 3


# -- embeddings, per input --------------------------------------------------------------------------
async def test_identical_embed_requests_hit_without_running_the_model(gw: EmbeddedGateway) -> None:
    first = await gw.embed(["the cat sat", "on the mat"])
    assert first.notes.cache_hits == 0
    rows = _rows(gw)
    second = await gw.embed(["the cat sat", "on the mat"])
    assert _rows(gw) == rows
    assert second.notes.cache_hits == 2
    assert second.vectors == first.vectors and second.tokens == first.tokens
    assert (second.dimension, second.model, second.normalized) == (first.dimension, first.model, first.normalized)
    assert second.usage.prompt_tokens == 0  # nothing was computed
    metrics = gw.metrics
    assert metrics.cache_hits.labels(task="embed")._value.get() == 2
    assert metrics.cache_misses.labels(task="embed")._value.get() == 2


async def test_a_batch_with_some_cached_texts_computes_only_the_misses(gw: EmbeddedGateway) -> None:
    known = await gw.embed(["alpha", "beta"])
    rows = _rows(gw)
    mixed = await gw.embed(["gamma", "alpha", "gamma", "beta", "delta"])
    assert _rows(gw) - rows == 2  # gamma (once, though given twice) and delta
    assert mixed.notes.cache_hits == 2
    assert mixed.vectors[1] == known.vectors[0] and mixed.vectors[3] == known.vectors[1]
    assert mixed.vectors[0] == mixed.vectors[2]
    fresh = await gw.embed(["delta"])  # now cached, and the same vector the batch computed
    assert fresh.notes.cache_hits == 1 and fresh.vectors[0] == mixed.vectors[4]


async def test_remote_embeddings_send_only_the_misses_upstream(gw: EmbeddedGateway, upstream: Upstream) -> None:
    model = "openai/text-embedding-3-small"
    before = len(_sent(upstream, "/embeddings"))
    await gw.embed(["one", "three"], model=model)
    mixed = await gw.embed(["three", "four!", "one"], model=model)
    sent = _sent(upstream, "/embeddings")[before:]
    assert [body["input"] for body in sent] == [["one", "three"], ["four!"]]
    assert [v[0] for v in mixed.vectors] == [5.0, 5.0, 3.0]  # the double's vector starts with the text length
    assert mixed.notes.cache_hits == 2


async def test_a_request_differing_in_one_parameter_misses(gw: EmbeddedGateway, upstream: Upstream) -> None:
    await gw.embed(["same text"])
    assert (await gw.embed(["same text"], truncate=False)).notes.cache_hits == 0
    assert (await gw.embed(["same text"], model="openai/text-embedding-3-small")).notes.cache_hits == 0
    before = len(_sent(upstream, "/chat/completions"))
    for options in (DETERMINISTIC, ChatOptions(model="openai/gpt-4o", temperature=0, seed=8)):
        await gw.chat(HELLO, options)
    with_raw = ChatOptions(model="openai/gpt-4o", temperature=0, seed=7, raw_provider_options={"user": "x"})
    assert (await gw.chat(HELLO, with_raw)).notes.cache_hits == 0
    max_tokens = ChatOptions(model="openai/gpt-4o", temperature=0, seed=7, max_tokens=50)
    assert (await gw.chat(HELLO, max_tokens)).notes.cache_hits == 0
    assert len(_sent(upstream, "/chat/completions")) - before == 4
    assert (await gw.chat(HELLO, DETERMINISTIC)).notes.cache_hits == 1


async def test_ttl_expiry_computes_again(gw: EmbeddedGateway, clock: Clock) -> None:
    await gw.embed(["short-lived"])
    rows = _rows(gw)
    clock.now += 61
    assert (await gw.embed(["short-lived"])).notes.cache_hits == 0
    assert _rows(gw) == rows + 1


async def test_a_reloaded_model_with_changed_files_never_serves_old_entries(
    gw: EmbeddedGateway, model_root: Path
) -> None:
    await gw.embed(["revision check"])
    assert (await gw.embed(["revision check"])).notes.cache_hits == 1
    folder = model_root / MODEL
    manifest, content = folder / "manifest.json", folder / CONTENT_FILE
    saved = manifest.read_bytes(), content.read_bytes()
    await gw.unload_model(MODEL)
    try:
        manifest.write_bytes(saved[0] + b"\n")  # the files were replaced (and hashed again)
        hash_folder(folder).write(folder)
        await gw.load_model(MODEL)
        assert (await gw.embed(["revision check"])).notes.cache_hits == 0
    finally:
        manifest.write_bytes(saved[0])
        content.write_bytes(saved[1])


async def test_nli_pairs_are_cached_one_by_one_and_classify_per_request(gw: EmbeddedGateway) -> None:
    a = ("A man eats.", "Someone eats.")
    b = ("A man eats.", "Nobody eats.")
    first = await gw.nli([a], model=TINY_NLI)
    both = await gw.nli([b, a], model=TINY_NLI)
    assert both.notes.cache_hits == 1 and both.predictions[1] == first.predictions[0]
    again = await gw.nli([a, b], model=TINY_NLI)
    assert again.notes.cache_hits == 2 and again.predictions == [both.predictions[1], both.predictions[0]]
    labels = ["cooking", "sports"]
    classified = await gw.classify("The striker scored twice.", labels, model=TINY_NLI)
    assert classified.notes.cache_hits == 0
    repeated = await gw.classify("The striker scored twice.", labels, model=TINY_NLI)
    assert repeated.notes.cache_hits == 1 and repeated.scores == classified.scores
    assert (
        await gw.classify("The striker scored twice.", labels, model=TINY_NLI, multi_label=True)
    ).notes.cache_hits == 0


# -- chat ---------------------------------------------------------------------------------------------
async def test_chat_is_cached_only_when_asked_and_deterministic(
    model_root: Path, upstream: Upstream, store: MemoryResponseCache
) -> None:
    def calls() -> int:
        return len(_sent(upstream, "/chat/completions"))

    off = await _gateway(model_root, upstream, store)  # cache.chat = false, nobody asks
    try:
        before = calls()
        for _ in range(2):
            assert (await off.chat(HELLO, DETERMINISTIC)).notes.cache_hits == 0
        assert calls() - before == 2
    finally:
        await off.close()
    on = await _gateway(model_root, upstream, store, chat=True)
    try:
        for options in (
            ChatOptions(model="openai/gpt-4o", seed=7),  # no temperature given
            ChatOptions(model="openai/gpt-4o", temperature=0.7, seed=7),
            ChatOptions(model="openai/gpt-4o", temperature=0),  # no seed
        ):
            before = calls()
            for _ in range(2):
                assert (await on.chat(HELLO, options)).notes.cache_hits == 0
            assert calls() - before == 2, options
        before = calls()
        first = await on.chat(HELLO, DETERMINISTIC)
        second = await on.chat(HELLO, DETERMINISTIC)
        assert calls() - before == 1
        assert second.notes.cache_hits == 1 and second.message == first.message
        assert (second.provider, second.model, second.finish_reason) == (
            first.provider,
            first.model,
            first.finish_reason,
        )
    finally:
        await on.close()


async def test_an_error_is_never_served_from_the_cache(gw: EmbeddedGateway, upstream: Upstream) -> None:
    # A refusal that is not retried (a 400), so each call is exactly one upstream request.
    options = ChatOptions(model="openai/bad-request", temperature=0, seed=7)
    before = len(_sent(upstream, "/chat/completions"))
    for _ in range(2):
        with pytest.raises(InvalidArgument):
            await gw.chat(HELLO, options)
    assert len(_sent(upstream, "/chat/completions")) - before == 2


async def test_a_cached_stream_replays_as_events(gw: EmbeddedGateway, upstream: Upstream) -> None:
    before = len(_sent(upstream, "/chat/completions"))
    first = [e async for e in gw.chat_stream(HELLO, DETERMINISTIC)]
    second = [e async for e in gw.chat_stream(HELLO, DETERMINISTIC)]
    assert len(_sent(upstream, "/chat/completions")) - before == 1
    deltas = [e for e in second if isinstance(e, ContentDelta)]
    assert deltas == [e for e in first if isinstance(e, ContentDelta)]
    assert "".join(d.text for d in deltas) == openai_double.assembled_text()
    done = second[-1]
    assert isinstance(done, Done) and done.notes.cache_hits == 1
    assert isinstance(first[-1], Done) and first[-1].notes.cache_hits == 0
    assert (done.finish_reason, done.provider, done.model) == (
        first[-1].finish_reason,
        first[-1].provider,
        first[-1].model,
    )
    # A unary answer and a stream are different requests: neither serves the other.
    assert (await gw.chat(HELLO, DETERMINISTIC)).notes.cache_hits == 0


# -- the daemon: the ask and the answer in metadata ----------------------------------------------------------
@pytest.fixture(scope="module")
def daemon(model_root: Path, upstream: Upstream) -> Iterator[DaemonProcess]:
    d = DaemonProcess(model_root, **_settings(model_root, upstream))
    d.start()
    yield d
    d.stop()


def test_the_daemon_caches_chat_when_the_caller_asks_and_says_so(daemon: DaemonProcess, upstream: Upstream) -> None:
    request = gateway_pb2.ChatRequest(
        messages=[types_pb2.Message(role="user", content="hi there")],
        options=types_pb2.ChatOptions(model="openai/gpt-4o", temperature=0, seed=3),
    )
    before = len(_sent(upstream, "/chat/completions"))
    with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        stub.Chat(request, timeout=30)  # not asked (cache.chat is off): not kept
        first, _ = stub.Chat.with_call(request, timeout=30, metadata=[(CACHE_KEY, "on")])
        second, call = stub.Chat.with_call(request, timeout=30, metadata=[(CACHE_KEY, "on")])
        embed = gateway_pb2.EmbedRequest(inputs=["x", "x y"], model=MODEL)
        stub.Embed(embed, timeout=30)
        bypassed = stub.Embed(embed, timeout=30, metadata=[(CACHE_KEY, "off")])
        again, embed_call = stub.Embed.with_call(embed, timeout=30)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Embed(embed, timeout=30, metadata=[(CACHE_KEY, "maybe")])
    assert len(_sent(upstream, "/chat/completions")) - before == 2
    assert second.notes.cache_hits == 1 and first.notes.cache_hits == 0
    assert dict(call.trailing_metadata() or ())[CACHE_KEY] == "1"
    assert bypassed.notes.cache_hits == 0
    assert again.notes.cache_hits == 2 and dict(embed_call.trailing_metadata() or ())[CACHE_KEY] == "2"
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
