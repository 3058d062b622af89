"""The pipeline's parts on their own: the chain, the stages' contract, plans, providers, retirement."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from ratatoskr_client import FailedPrecondition, NotFound
from ratatoskr_client.types import ChatEvent, ChatOptions, ContentDelta, Done, EmbedResult, Message
from ratatoskr_server.config import load_settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.pipeline.call import Call, ChatInput, EmbedInput, Result
from ratatoskr_server.pipeline.chain import Chain, Next, NextStream, Stage
from ratatoskr_server.providers import capabilities
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.providers.local import LocalProvider
from ratatoskr_server.providers.registry import ADAPTERS
from ratatoskr_server.routing.router import Router
from tests.conftest import MODEL
from tests.upstreams import openai_double
from tests.upstreams.harness import serve

HELLO = [Message(role="user", content="hello")]
_PROTOCOLS = {
    Capability.CHAT: capabilities.ChatProvider,
    Capability.GENERATE: capabilities.GenerateProvider,
    Capability.EMBED: capabilities.EmbedProvider,
    Capability.NLI: capabilities.NliProvider,
    Capability.CLASSIFY: capabilities.ClassifyProvider,
}


class _Settle(Stage):
    """A stage with work that must run however the call ends, as a budget's settle will."""

    def __init__(self) -> None:
        self.settled: list[str] = []

    async def unary(self, call: Call, ctx: RequestContext, next: Next) -> Result:
        outcome = "cancel"
        try:
            result = await next(call, ctx)
            outcome = "ok"
            return result
        except Exception:
            outcome = "error"
            raise
        finally:
            self.settled.append(outcome)

    async def stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        outcome = "cancel"
        try:
            async with aclosing(next(call, ctx)) as events:  # type: ignore[type-var]  # the stage contract
                async for event in events:
                    yield event
            outcome = "ok"
        except Exception:
            outcome = "error"
            raise
        finally:
            self.settled.append(outcome)


class _Tag(Stage):
    """Changes the call on the way down, so later stages and the terminal see the change."""

    async def unary(self, call: Call, ctx: RequestContext, next: Next) -> Result:
        return await next(call.but(model=call.model + "+tag"), ctx)

    def stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        return next(call.but(model=call.model + "+tag"), ctx)


class _Terminal:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.seen: list[str] = []
        self.closed = False

    async def unary(self, call: Call, ctx: RequestContext) -> Result:
        self.seen.append(call.model)
        if self.mode == "error":
            raise NotFound("nothing here")
        if self.mode == "hang":
            await asyncio.Event().wait()
        return EmbedResult([[1.0]], [1], [False], 1, call.model, True)

    async def stream(self, call: Call, ctx: RequestContext) -> AsyncIterator[ChatEvent]:
        self.seen.append(call.model)
        try:
            yield ContentDelta("a")
            if self.mode == "error":
                raise NotFound("cut")
            yield ContentDelta("b")
            yield Done("stop")
        finally:
            self.closed = True


def _embed_call() -> Call:
    return Call(Capability.EMBED, "m", EmbedInput(["x"]))


def _chat_call() -> Call:
    return Call(Capability.CHAT, "m", ChatInput(HELLO), ChatOptions(model="m"))


async def test_stages_run_in_order_and_settle_on_success_failure_and_cancel() -> None:
    ctx = RequestContext.start()
    for mode, outcome in (("ok", "ok"), ("error", "error")):
        settle, terminal = _Settle(), _Terminal(mode)
        chain = Chain([_Tag(), settle], terminal)
        if mode == "ok":
            assert (await chain.run(_embed_call(), ctx)).model == "m+tag"
        else:
            with pytest.raises(NotFound):
                await chain.run(_embed_call(), ctx)
        assert terminal.seen == ["m+tag"] and settle.settled == [outcome]

    settle, terminal = _Settle(), _Terminal("hang")
    task = asyncio.create_task(Chain([settle], terminal).run(_embed_call(), ctx))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert settle.settled == ["cancel"]


async def test_streams_settle_on_success_failure_and_a_consumer_that_leaves() -> None:
    ctx = RequestContext.start()
    settle = _Settle()
    events = [e async for e in Chain([_Tag(), settle], _Terminal("ok")).stream(_chat_call(), ctx)]
    assert [type(e).__name__ for e in events] == ["ContentDelta", "ContentDelta", "Done"]
    assert settle.settled == ["ok"]

    settle = _Settle()
    with pytest.raises(NotFound):
        async for _ in Chain([settle], _Terminal("error")).stream(_chat_call(), ctx):
            pass
    assert settle.settled == ["error"]

    settle, terminal = _Settle(), _Terminal("ok")
    stream = Chain([settle, _Tag(), _Settle()], terminal).stream(_chat_call(), ctx)
    assert isinstance(await anext(aiter(stream)), ContentDelta)
    await stream.aclose()  # type: ignore[attr-defined]
    assert settle.settled == ["cancel"]
    assert terminal.closed  # at once, through every stage: not left to the garbage collector


class _Refuse(Stage):
    """A stage that returns a stream rather than being one, and refuses when it is called."""

    def stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        raise NotFound("refused by the stage")


async def test_a_stage_that_returns_a_stream_is_called_at_the_first_read() -> None:
    """What it raises must reach whoever reads the stream (a retry or fallback stage above), not
    whoever merely asked for it."""
    terminal = _Terminal("ok")
    stream = Chain([_Refuse(), _Settle()], terminal).stream(_chat_call(), RequestContext.start())  # no raise yet
    with pytest.raises(NotFound, match="refused by the stage"):
        await anext(aiter(stream))
    assert terminal.seen == []


def test_every_adapter_implements_the_protocol_of_each_capability_it_declares() -> None:
    for kind, cls in ADAPTERS.items():
        for capability in cls.capabilities:
            protocol = _PROTOCOLS[capability]
            missing = [name for name in protocol.__dict__ if not name.startswith("_") and not hasattr(cls, name)]
            assert not missing, f"{kind} declares {capability} but lacks {missing}"
    for capability in LocalProvider.capabilities:
        assert all(hasattr(LocalProvider, n) for n in _PROTOCOLS[capability].__dict__ if not n.startswith("_"))


def test_the_plan_resolves_aliases_for_local_and_remote_models_alike() -> None:
    settings = load_settings(
        local={"preload": [], "auto_import_default": False},
        providers={"openai": {"kind": "openai_compat", "base_url": "http://127.0.0.1:9/v1"}},
        aliases={"mini": f"local/{MODEL}", "smart": "openai/gpt-4o"},
    )
    local = LocalProvider(pool=None)  # type: ignore[arg-type]  # the plan never touches the pool
    router = Router(settings, local)
    (embed,) = router.plan("mini", Capability.EMBED)
    assert embed.provider is local and embed.model == f"local/{MODEL}"
    (chat,) = router.plan("smart", Capability.CHAT)
    assert chat.provider.name == "openai" and chat.model == "gpt-4o"
    with pytest.raises(FailedPrecondition, match="local ONNX model"):
        router.plan("mini", Capability.CHAT)
    with pytest.raises(NotFound, match="names no configured provider"):
        router.plan("nobody/nothing", Capability.CHAT)


async def test_a_retired_router_closes_when_its_last_call_ends(model_root: Path) -> None:
    """A reload swaps the router at once; a stream on the old one finishes, then its connections close."""
    with serve(openai_double.routes()) as upstream:
        providers = {"openai": {"kind": "openai_compat", "base_url": f"{upstream.base_url}/v1"}}
        settings = load_settings(local={"model_dir": model_root, "preload": []}, providers=providers)
        gw = EmbeddedGateway(settings)
        try:
            old = gw.gateway.router
            stream = gw.chat_stream(HELLO, ChatOptions(model="openai/slow-brief"))
            assert isinstance(await anext(aiter(stream)), ContentDelta)
            await gw.apply_settings(load_settings(local={"model_dir": model_root, "preload": []}, providers=providers))
            assert gw.gateway.router is not old
            await asyncio.sleep(0.05)
            assert not old.closed  # the stream still holds it
            rest = [e async for e in stream]
            assert isinstance(rest[-1], Done)
            for _ in range(100):
                if old.closed:
                    break
                await asyncio.sleep(0.01)
            assert old.closed and old.providers["openai"].client.is_closed
            assert (await gw.chat(HELLO, ChatOptions(model="openai/gpt-4o"))).message.content  # the new one serves
        finally:
            await gw.close()


async def test_catalogued_models_answer_metadata_without_a_provider(tmp_path: Path) -> None:
    """The shipped catalogue's facts answer GetModelMetadata, marked as not routable here."""
    gw = EmbeddedGateway(load_settings(local={"model_dir": tmp_path, "preload": [], "auto_import_default": False}))
    try:
        for name in ("gpt-4-turbo", "openai/gpt-4-turbo"):
            meta = await gw.model_metadata(name)
            assert meta.info.id == name and not meta.info.routable
            assert meta.context_window == 128000 and meta.pricing is not None and meta.pricing.input_per_million > 0
        assert (await gw.model_metadata("openai/gpt-4-turbo")).info.provider == "openai"
        with pytest.raises(NotFound, match="not in the model catalogue"):
            await gw.model_metadata("no-such-family-xyz")
        with pytest.raises(NotFound, match="names no configured provider"):
            await gw.chat(HELLO, ChatOptions(model="openai/gpt-4-turbo"))  # known, but not routable here
    finally:
        await gw.close()


async def test_local_timing_parts_add_up(model_root: Path) -> None:
    """Tokenization, queue and inference never exceed the total, even when batches run side by side."""
    settings = load_settings(
        local={"model_dir": model_root, "preload": [], "batching": {"max_batch_size": 2, "concurrency": 2}}
    )
    gw = EmbeddedGateway(settings)
    try:
        texts = [f"sentence number {i} about the weather" for i in range(12)]
        results: list[Any] = await asyncio.gather(
            gw.classify("The striker scored twice.", ["cooking", "finance", "sports"]),
            gw.embed(texts),
            *(gw.embed([t]) for t in texts[:4]),
        )
        for result in results:
            t = result.timing
            assert t.queue_ms + t.tokenization_ms + t.inference_ms <= t.total_ms + 1e-6, t
    finally:
        await gw.close()
