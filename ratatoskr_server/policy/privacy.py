"""The privacy stage: a call goes only where its privacy tier allows, checked before dispatch.

The request's tier is the strictest of ``privacy.tier``, the caller key's ceiling and the request's
own ask (``RequestContext.tighten_privacy``: nothing can loosen it).  Candidates whose host resolves
(briefly cached) to an address the tier forbids are dropped from the plan; when none is left the
call is refused with PERMISSION_DENIED naming the tier and the host.  The in-process ONNX pool is
always allowed: it never leaves the process.

This check is the early, cheap answer, not the enforcement: around the rest of the chain the tier
is set in ``net.egress.requested_tier``, and the network backend checks the address it is about to
connect to, freshly resolved, whatever this stage saw.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ratatoskr_client.types import ChatEvent, PrivacyTier
from ratatoskr_server.context import RequestContext
from ratatoskr_server.net.egress import EgressPolicy, EgressRefused, requested_tier
from ratatoskr_server.pipeline.call import Call, Candidate, Result
from ratatoskr_server.pipeline.chain import Next, NextStream, Stage
from ratatoskr_server.providers.base import HttpProvider


class PrivacyStage(Stage):
    def __init__(self, egress: EgressPolicy) -> None:
        self.egress = egress

    async def allowed(self, call: Call, ctx: RequestContext) -> tuple[Call, PrivacyTier]:
        """The call with only the candidates its tier allows (the first of them as target), and the tier."""
        ctx.tighten_privacy(self.egress.tier)
        tier = ctx.privacy_tier
        assert tier is not None  # just tightened
        if tier is PrivacyTier.STANDARD:
            return call, tier  # every configured provider may be used
        kept: list[Candidate] = []
        refusal: EgressRefused | None = None
        for candidate in call.candidates:
            provider = candidate.provider
            if isinstance(provider, HttpProvider):
                try:
                    reach = await provider.reach()
                    if reach.tier.rank > tier.rank:  # the loosest address decides; check() names it
                        self.egress.check(reach.host, reach.addresses, tier)
                except EgressRefused as err:
                    refusal = refusal or err
                    continue
                except OSError:
                    pass  # unresolvable now: the connect resolves again and fails (or is refused) there
            kept.append(candidate)
        if not kept:
            assert refusal is not None, "a plan has at least one candidate"
            raise refusal
        if len(kept) == len(call.candidates):
            return call, tier  # nothing dropped: no copy
        target = call.target if call.target in kept else kept[0]
        return call.but(candidates=tuple(kept), target=target), tier

    async def unary(self, call: Call, ctx: RequestContext, next: Next) -> Result:
        call, tier = await self.allowed(call, ctx)
        with requested_tier(tier):
            return await next(call, ctx)

    async def stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        call, tier = await self.allowed(call, ctx)
        # The tier is set around each step of the stream, not across a yield: the consumer may
        # resume the stream from another context, and a value set across a yield would leak into it.
        with requested_tier(tier):
            events = next(call, ctx)
        try:
            while True:
                with requested_tier(tier):
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        return
                yield event
        finally:
            with requested_tier(tier):
                await events.aclose()  # type: ignore[attr-defined]
