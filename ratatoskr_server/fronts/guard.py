"""Who is calling, and whether they may: API keys, scopes, per-key rates, for every front.

Both fronts (gRPC and the OpenAI-compatible HTTP one) pass each call through ``Guard.admit`` with
what it needs and nothing transport-shaped: the operation's name (``SCOPE_BY_RPC``; the HTTP front
names the gRPC method its route stands for, so one key has one meaning on both), the peer ("unix:…"
for the Unix socket, anything else is TCP) and the request's metadata as (key, value) pairs with
lower-case keys (gRPC metadata; HTTP headers).  The rules:

- a key is sent as ``authorization: Bearer rtk_…``; a key that is sent is always checked, on any
  transport: an unknown one is UNAUTHENTICATED, never quietly ignored;
- without a key, a call is let through only where the transport does not require one (the Unix
  socket by default, whose file mode and group decide who may connect; TCP only when
  ``server.tcp_require_auth = false``), and then with every scope;
- a key carries scopes (``SCOPE_BY_RPC``); a missing one is PERMISSION_DENIED.  The Admin service
  needs the ``admin`` scope, except on the Unix socket, where reaching the socket is enough;
- an authenticated caller's name, budget scope and privacy ceiling go on the RequestContext, and its
  rpm/tpm limits are enforced by a ``RateCounter`` (RESOURCE_EXHAUSTED with retry-after).

Tokens never appear in a message, a log line or a metric: errors name the key's caller or nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ratatoskr_client.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from ratatoskr_server.config import CallerSettings, Scope, ServerSettings, Settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.keys import KeyRing
from ratatoskr_server.state.rates import MemoryRates, RateCounter

AUTHORIZATION_KEY = "authorization"
_BEARER = "bearer "

#: How a caller of each transport sends its key, for the message that asks for one: each front's
#: callers know their own tools (gRPC metadata and our client; an HTTP header and the OpenAI SDKs).
KEY_HINT_BY_TRANSPORT = {
    "grpc": "send `authorization: Bearer <key>` metadata (ServiceClient(api_key=…) or RATATOSKR_API_KEY)",
    "http": "send the header `Authorization: Bearer <key>` (api_key=… in the OpenAI SDKs)",
}

#: The scope each RPC needs; "" is any valid key.  An RPC missing here needs ``admin`` (fail closed).
SCOPE_BY_RPC: dict[str, Scope | str] = {
    "Chat": "chat",
    "ChatStream": "chat",
    "Generate": "chat",
    "GenerateStream": "chat",
    "RenderChatTemplate": "chat",
    "CountTokens": "chat",
    "Embed": "embed",
    "Tokenize": "embed",
    "Nli": "nli",
    "Classify": "classify",
    "ListModels": "",
    "GetModelMetadata": "",
    "Status": "admin",
    "Reload": "admin",
    "LoadModel": "admin",
    "UnloadModel": "admin",
    "SwapModel": "admin",
    "ListLoadedModels": "admin",
    "GetBudget": "admin",
}


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: its name and the settings of its key."""

    name: str
    settings: CallerSettings


def is_local_peer(peer: str) -> bool:
    """Whether a grpc peer string is the Unix socket ("unix:…"), rather than TCP ("ipv4:…", "ipv6:…")."""
    return peer.startswith("unix:")  # not "unix-abstract:": an abstract socket has no file mode to guard it


def bearer_token(metadata: object) -> str | None:
    """The token of the call's ``authorization`` metadata, "" for a malformed value, None when absent."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == AUTHORIZATION_KEY:
            text = value if isinstance(value, str) else ""
            return text[len(_BEARER) :].strip() if text.lower().startswith(_BEARER) else ""
    return None


class Guard:
    """Authentication, scopes and rates for one configuration; replaced whole on reload."""

    def __init__(self, settings: Settings, rates: RateCounter | None = None) -> None:
        server: ServerSettings = settings.server
        self.socket_require_auth = server.socket_require_auth
        self.tcp_require_auth = server.tcp_require_auth
        self.callers: Mapping[str, CallerSettings] = {n: c for n, c in settings.callers.items() if c.enabled}
        self.keys = KeyRing({name: key for name, c in self.callers.items() if (key := c.stored()) is not None})
        self.rates: RateCounter = rates if rates is not None else MemoryRates()

    def authenticate(self, rpc: str, peer: str, metadata: object, transport: str = "grpc") -> Caller | None:
        """The caller, None for an anonymous one the transport allows; raises when neither.

        ``transport`` ("grpc", "http") only words the message that asks for a key."""
        local = is_local_peer(peer)
        token = bearer_token(metadata)
        if token is None:
            if self.socket_require_auth if local else self.tcp_require_auth:
                where = "the Unix socket" if local else "HTTP" if transport == "http" else "TCP"
                hint = KEY_HINT_BY_TRANSPORT.get(transport, KEY_HINT_BY_TRANSPORT["grpc"])
                raise Unauthenticated(f"{rpc} over {where} needs an API key: {hint}")
            return None
        name = self.keys.match(token)
        if name is None:
            raise Unauthenticated("the API key is not valid (unknown, malformed or revoked)")
        caller = Caller(name, self.callers[name])
        needed = SCOPE_BY_RPC.get(rpc, "admin")
        if needed == "admin" and local:
            return caller  # reaching the socket is what Admin asks there
        if needed and needed not in caller.settings.scopes:
            raise PermissionDenied(f"caller {name!r} lacks the {needed!r} scope needed by {rpc}")
        return caller

    async def admit(
        self, rpc: str, peer: str, metadata: object, ctx: RequestContext, transport: str = "grpc"
    ) -> Caller | None:
        """Authenticate, put the caller on ``ctx`` and count the call against its rates."""
        caller = self.authenticate(rpc, peer, metadata, transport)
        if caller is None:
            return None
        key = caller.settings
        ctx.caller = caller.name
        ctx.budget_scope = key.budget_scope  # empty: the caller's own (RequestContext.budget_scope)
        ctx.tighten_privacy(key.privacy_ceiling)
        if key.rpm is not None or key.tpm is not None:
            limited = await self.rates.admit(caller.name, rpm=key.rpm, tpm=key.tpm)
            if limited is not None:
                per_minute = key.rpm if limited.limit == "rpm" else key.tpm
                unit = "calls" if limited.limit == "rpm" else "tokens"
                raise ResourceExhausted(
                    f"caller {caller.name!r} is at its limit of {per_minute} {unit} per minute ({limited.limit}); "
                    f"retry in {limited.retry_after_s:.1f}s",
                    retry_after_s=math.ceil(limited.retry_after_s * 1000) / 1000,
                )
        return caller

    async def settle_tokens(self, caller: Caller | None, tokens: int) -> None:
        """Count the tokens a finished call (or one stream event) reported against its caller's tpm."""
        if caller is None or caller.settings.tpm is None or tokens <= 0:
            return
        await self.rates.record_tokens(caller.name, tokens)
