"""Spillover of local-first routes (issue 12, part 5): real queues, held deterministically.

Two local candidates are saturated without timing luck:
- the in-process ONNX pool: its one inference thread is given a task that waits on an event, so
  the batch the worker formed cannot run and every later request waits in the batcher, whose depth
  the test reads until it is exactly what it loaded;
- a local server (the OpenAI double marked ``local = true``, as llama.cpp would be): its "hold"
  model answers only when the test releases it, so the calls in flight on it are exactly those
  the double has received.
The public provider sits at a TEST-NET-3 literal address and is only ever named by Sovereign
requests: the privacy stage removes it before any connect, so nothing leaves loopback.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ratatoskr_client import AsyncServiceClient
from ratatoskr_client.client import SPILLED_KEY
from ratatoskr_client.convert import notes_from_pb, notes_to_pb, status_from_pb, status_to_pb
from ratatoskr_client.errors import ResourceExhausted
from ratatoskr_client.types import ChatOptions, EmbedResult, Message, Notes, PrivacyTier, ServerStatus
from ratatoskr_server.config import ConfigError, Settings, load_settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.fronts.grpc.status import trailing_metadata
from ratatoskr_server.gateway import Gateway
from ratatoskr_server.local.pool import LocalModelPool
from ratatoskr_server.registry import ModelRegistry
from ratatoskr_server.routing.breaker import Breakers
from ratatoskr_server.telemetry.metrics import Metrics
from tests.conftest import MODEL, DaemonProcess
from tests.upstreams import openai_double
from tests.upstreams.harness import Upstream, serve

HI = [Message("user", "hi")]
#: TEST-NET-3 (RFC 5737): a public address nothing answers at; only Sovereign requests name it.
PUBLIC = "http://203.0.113.9:9/v1"
LOCAL_ID = f"local/{MODEL}"
#: A probe that is wrongly queued behind the held work fails by this deadline instead of hanging.
PROBE_S = 15.0


@pytest.fixture(scope="module")
def up() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as upstream:
        yield upstream


async def until(condition: Callable[[], bool], what: str, limit_s: float = 20.0) -> None:
    """Wait for a state the test set up to be reached (a bound against hanging, not a timing bet)."""
    give_up = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"never reached: {what}")
        await asyncio.sleep(0.005)


# -- the in-process ONNX pool ----------------------------------------------------------------------
def _settings(model_root: Path, up: Upstream) -> Settings:
    spill = {"spill_at": 2, "reject_at": 4}
    return load_settings(
        local={
            "model_dir": model_root,
            "preload": [MODEL],
            "auto_import_default": False,
            "batching": {"max_batch_size": 1, "concurrency": 1},
        },
        providers={
            "up": {"kind": "openai_compat", "base_url": f"{up.base_url}/v1"},
            "public": {"kind": "openai_compat", "base_url": PUBLIC},
        },
        routes={
            "embeds": {"candidates": [MODEL, "up/text-embed"], **spill},
            "kept-embeds": {"candidates": [MODEL, "public/text-embed"], **spill},
        },
        resilience={"breaker": {"min_calls": 2, "failure_threshold": 0.5}},
    )


class Held:
    """A gateway whose one inference thread the test holds and lets go."""

    def __init__(self, settings: Settings) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="held-infer")
        loader = ThreadPoolExecutor(1, thread_name_prefix="held-load")
        self.gateway = Gateway(
            settings,
            pool=LocalModelPool(settings, self.executor, loader),
            registry=ModelRegistry.embedded(),
            metrics=Metrics(),
            executor=self.executor,
            owned_executors=(self.executor, loader),
        )
        self.gw = EmbeddedGateway(settings, gateway=self.gateway)
        self.gate = threading.Event()

    def hold(self) -> None:
        self.executor.submit(self.gate.wait)

    def depth(self) -> int:
        return self.gateway.pool.queue_depth(MODEL)

    async def sovereign_embed(self, text: str, route: str, timeout: float = 60) -> EmbedResult:
        ctx = RequestContext.start(timeout=timeout)
        ctx.tighten_privacy(PrivacyTier.SOVEREIGN)
        return await self.gateway.embed(ctx, [text], model=route)


@pytest.fixture
async def held(model_root: Path, up: Upstream) -> AsyncIterator[Held]:
    h = Held(_settings(model_root, up))
    await h.gw.start()
    try:
        yield h
    finally:
        h.gate.set()  # never leave the inference thread waiting: the interpreter joins it at exit
        await h.gw.close()


async def test_a_saturated_local_model_spills_to_the_remote_candidate_and_rejects_at_the_maximum(
    held: Held, up: Upstream
) -> None:
    embeds_before = sum(1 for r in up.requests if r.path.endswith("/embeddings"))
    quiet = await held.gw.embed(["the queue is empty"], model="embeds", timeout=PROBE_S)
    assert quiet.model == MODEL and quiet.notes.spilled_from == ""  # under spill_at: the local model answers

    held.hold()
    load = [asyncio.create_task(held.gw.embed([f"queued {i}"], model=MODEL)) for i in range(3)]
    await until(lambda: held.depth() == 2, "two requests waiting behind the one in the held batch")
    (watched,) = [m for m in held.gw.loaded_models() if m.name == MODEL]
    assert watched.queued == 2 and watched.in_flight == 3  # what `ratatoskr status --watch` shows

    spilled = await held.gw.embed(["spill me"], model="embeds", timeout=PROBE_S)
    assert spilled.model == "up/text-embed" and spilled.vectors == [[8.0, 0.5, -0.25]]
    assert spilled.notes.spilled_from == LOCAL_ID and spilled.notes.failed_over == []

    # Sovereign: the public candidate is gone before anything is decided, so the call queues locally.
    kept = [asyncio.create_task(held.sovereign_embed(f"kept {i}", "kept-embeds")) for i in range(2)]
    await until(lambda: held.depth() == 4, "the Sovereign requests queued behind the others")
    with pytest.raises(ResourceExhausted, match=r"routes\.kept-embeds\.reject_at = 4") as refused:
        await held.sovereign_embed("one too many", "kept-embeds", PROBE_S)
    assert refused.value.retry_after_s == 1.0

    # At the maximum, a request that may spill still does (the reference design's order) ...
    assert (await held.gw.embed(["still spills"], model="embeds", timeout=PROBE_S)).model == "up/text-embed"
    # ... until no spill target can take it: with its breaker open, the route refuses too.
    breakers = Breakers(held.gateway.settings.resilience.breaker, held.gateway.breakers)
    for _ in range(2):
        breakers.record("up/text-embed", True)
    with pytest.raises(ResourceExhausted, match="no other candidate"):
        await held.gw.embed(["nowhere to go"], model="embeds", timeout=PROBE_S)
    assert held.depth() == 4  # nothing refused joined the queue

    held.gate.set()
    answered = await asyncio.gather(*load, *kept)
    assert [r.model for r in answered] == [MODEL] * 5
    assert all(r.dimension == 384 and r.notes.spilled_from == "" and r.notes.failed_over == [] for r in answered)
    (after,) = [m for m in held.gw.loaded_models() if m.name == MODEL]
    slot = held.gateway.pool._slots[MODEL]
    assert slot.model is not None
    stats = slot.model.batcher.stats
    # Batches here hold one input each (max_batch_size = 1): six ran, the quiet call and the five held back.
    assert (after.queued, after.mean_batch_size, after.largest_batch) == (0, 1.0, 1) and stats.runs == 6
    embeds_now = sum(1 for r in up.requests if r.path.endswith("/embeddings"))
    assert embeds_now - embeds_before == 2  # exactly the two spilled calls reached the remote
    spills = held.gateway.metrics.registry.get_sample_value("ratatoskr_spills_total", {"provider": "local"})
    assert spills == 2


# -- a local server, in a real daemon --------------------------------------------------------------
@pytest.fixture
def local_server(model_root: Path, up: Upstream) -> Iterator[DaemonProcess]:
    spill = {"spill_at": 3, "reject_at": 5}
    up.state["release"] = threading.Event()
    d = DaemonProcess(
        model_root,
        local={"preload": []},
        providers={
            "llamacpp": {"kind": "openai_compat", "base_url": f"{up.base_url}/v1", "local": True},
            "remote": {"kind": "openai_compat", "base_url": f"{up.base_url}/v1"},
            "public": {"kind": "openai_compat", "base_url": PUBLIC},
        },
        routes={
            "chat": {"candidates": ["llamacpp/hold", "remote/gpt-test"], **spill},
            "kept": {"candidates": ["llamacpp/hold", "public/gpt-test"], **spill},
        },
    ).start()
    try:
        yield d
    finally:
        up.state["release"].set()
        d.stop()


def _holds(up: Upstream) -> int:
    return sum(1 for r in up.requests if isinstance(r.body, dict) and r.body.get("model") == "hold")


def test_a_busy_local_server_spills_and_sovereign_requests_never_reach_a_public_provider(
    local_server: DaemonProcess, up: Upstream
) -> None:
    holds_before = _holds(up)

    async def run() -> dict[str, Any]:
        async with (
            AsyncServiceClient(local_server.socket, timeout=PROBE_S) as client,
            AsyncServiceClient(local_server.socket, timeout=PROBE_S, privacy_tier=PrivacyTier.SOVEREIGN) as sovereign,
        ):
            load = [asyncio.create_task(client.chat(HI, ChatOptions(model="chat"))) for _ in range(3)]
            await until(lambda: _holds(up) - holds_before == 3, "three calls in flight on the local server")
            spilled = await client.chat(HI, ChatOptions(model="chat"))
            kept = [asyncio.create_task(sovereign.chat(HI, ChatOptions(model="kept"))) for _ in range(2)]
            await until(lambda: _holds(up) - holds_before == 5, "the Sovereign calls queued on the local server")
            refused: ResourceExhausted | None = None
            try:
                await sovereign.chat(HI, ChatOptions(model="kept"))
            except ResourceExhausted as err:
                refused = err
            spilled_at_max = await client.chat(HI, ChatOptions(model="chat"))
            status = await client.status()
            up.state["release"].set()
            return {
                "load": await asyncio.gather(*load),
                "kept": await asyncio.gather(*kept),
                "spilled": spilled,
                "spilled_at_max": spilled_at_max,
                "refused": refused,
                "status": status,
            }

    out = asyncio.run(run())
    for result in (out["spilled"], out["spilled_at_max"]):
        assert (result.provider, result.model) == ("remote", "gpt-test")
        assert result.notes.spilled_from == "llamacpp/hold"
    refused = out["refused"]
    assert refused is not None and refused.retry_after_s == 1.0
    assert "routes.kept.reject_at = 5" in refused.message
    for result in [*out["load"], *out["kept"]]:
        assert result.provider == "llamacpp" and result.notes.spilled_from == ""
        assert result.message.content == openai_double.assembled_text()
    assert out["status"].bulkhead_in_flight["providers.llamacpp"] == 5
    assert out["status"].bulkhead_limits["providers.llamacpp"] == 128
    assert _holds(up) - holds_before == 5  # the refused call never reached the local server either
    lines = [r for r in local_server.records() if r.get("msg") == "request" and r.get("rpc") == "Chat"]
    assert sum(1 for r in lines if r.get("spilled_from") == "llamacpp/hold") == 2
    assert not any("public" in str(r) for r in local_server.records())  # never tried, never failed over from


def test_a_spill_travels_in_the_wire_notes_trailing_metadata_and_status() -> None:
    notes = Notes(spilled_from="llamacpp/hold", failed_over=["remote/gpt-test"])
    assert notes_from_pb(notes_to_pb(notes)) == notes
    ctx = RequestContext.start()
    ctx.note_spilled("llamacpp/hold")
    assert ctx.notes.spilled_from == "llamacpp/hold"
    assert dict(trailing_metadata(ctx))[SPILLED_KEY] == "llamacpp/hold"
    status = ServerStatus(
        "1", 1, 0.0, [], 0, 1, "serving", [],
        bulkhead_in_flight={"local": 3, "providers.up": 8}, bulkhead_limits={"local": 192, "providers.up": 8},
    )  # fmt: skip
    assert status_from_pb(status_to_pb(status)) == status


def test_reject_at_below_spill_at_is_refused_in_the_configuration() -> None:
    with pytest.raises(ConfigError, match=r"routes\.r: .*reject_at \(5\) must not be below spill_at \(10\)"):
        load_settings(routes={"r": {"candidates": ["a/b"], "spill_at": 10, "reject_at": 5}})
