"""The privacy tiers' cost on a chat call, p50/p99 in µs.

The privacy stage, timed as it runs on the event loop around a next step that answers at once:
  - Standard (the default): the stage only tightens the request's tier and passes the call on;
  - Sovereign, a loopback provider, its host's addresses cached (``privacy.resolve_cache_s``):
    what a chat call pays while the cache is warm;
  - Sovereign, no cache: the host is resolved for every call (an in-process resolver here, so this
    is the guard's own cost, not DNS's).
Beside them, the stage's floor (the same next step with no stage), and the connect-time guard: a
new TCP connection to a loopback listener through ``GuardedBackend`` against the plain httpcore
backend it wraps (resolve through the injected resolver, check, connect to the checked address).

Run: .venv/bin/python bench/privacy.py [--rounds 2000]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

import httpcore
from stage_timing import timed

from ratatoskr_client.types import ChatOptions, ChatResult, Message, PrivacyTier
from ratatoskr_server.config import load_settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.net.egress import EgressPolicy
from ratatoskr_server.net.guarded import GuardedBackend
from ratatoskr_server.pipeline.call import Call, ChatInput, Result
from ratatoskr_server.policy.privacy import PrivacyStage
from ratatoskr_server.providers.capabilities import Capability
from ratatoskr_server.routing.router import Router

ANSWER = ChatResult(message=Message("assistant", "hi"), finish_reason="stop")


async def resolver(host: str, port: int) -> Sequence[str]:
    return ["127.0.0.1"]


async def answer(call: Call, ctx: RequestContext) -> Result:
    return ANSWER


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    messages = [Message("user", "hello")]

    def setup(tier: str, cache_s: float) -> tuple[PrivacyStage, Call, Router]:
        settings = load_settings(
            providers={"near": {"kind": "openai_compat", "base_url": "http://near.test:8080/v1"}},
            privacy={"tier": tier, "resolve_cache_s": cache_s},
        )
        egress = EgressPolicy.from_settings(settings, resolver)
        router = Router(settings, egress=egress)
        candidates = router.plan("near/m", Capability.CHAT)
        call = Call(
            Capability.CHAT, "near/m", ChatInput(messages), ChatOptions(model="near/m"), candidates, candidates[0]
        )
        return PrivacyStage(egress), call, router

    _, floor_call, floor_router = setup("standard", 10.0)
    await timed("floor: the next step alone", args.rounds, lambda: answer(floor_call, RequestContext.start()))
    routers = [floor_router]
    for name, tier, cache_s in (
        ("standard (default)", "standard", 10.0),
        ("sovereign, loopback provider, addresses cached", "sovereign", 10.0),
        ("sovereign, resolved every call (no cache)", "sovereign", 0.0),
    ):
        stage, call, router = setup(tier, cache_s)
        routers.append(router)
        await timed(
            f"privacy stage: {name}",
            args.rounds,
            lambda s=stage, c=call: s.unary(c, RequestContext.start(), answer),  # type: ignore[misc]
        )

    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    plain = httpcore.AnyIOBackend()
    guarded = GuardedBackend(EgressPolicy(PrivacyTier.SOVEREIGN, resolver=resolver), PrivacyTier.SOVEREIGN, plain)

    async def connect(backend: httpcore.AsyncNetworkBackend, host: str) -> None:
        stream = await backend.connect_tcp(host, port, timeout=5)
        await stream.aclose()

    rounds = max(args.rounds // 4, 100)
    await timed("connect: plain httpcore backend, 127.0.0.1", rounds, lambda: connect(plain, "127.0.0.1"))
    await timed("connect: guarded, sovereign, near.test -> 127.0.0.1", rounds, lambda: connect(guarded, "near.test"))
    server.close()
    for router in routers:
        await router.aclose()


if __name__ == "__main__":
    asyncio.run(main())
