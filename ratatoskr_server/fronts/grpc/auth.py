"""The gRPC side of the guard: tokens counted from a protobuf response's ``usage`` field.

Keys, scopes and rates are the transport-neutral ``fronts.guard.Guard`` (the HTTP front uses the
same one); only reading a protobuf message's usage is gRPC-shaped, so only that lives here.
"""

from __future__ import annotations

from google.protobuf.message import Message as ProtoMessage

from ratatoskr_server.fronts.guard import (
    AUTHORIZATION_KEY,
    SCOPE_BY_RPC,
    Caller,
    bearer_token,
    is_local_peer,
)
from ratatoskr_server.fronts.guard import Guard as _Guard

__all__ = ["AUTHORIZATION_KEY", "SCOPE_BY_RPC", "Caller", "Guard", "bearer_token", "is_local_peer", "usage_tokens"]


class Guard(_Guard):
    """The transport-neutral guard, settling tpm from protobuf responses and stream events."""

    async def settle(self, caller: Caller | None, message: object) -> None:
        """Count the tokens a finished call (or one stream event) reports against its caller's tpm."""
        if caller is None or caller.settings.tpm is None:
            return
        await self.settle_tokens(caller, usage_tokens(message))


def usage_tokens(message: object) -> int:
    """Tokens a response (or a stream's usage event) reports in its ``usage`` field; 0 without one."""
    if not isinstance(message, ProtoMessage):
        return 0
    try:
        if not message.HasField("usage"):
            return 0
    except ValueError:  # no such field in this message type
        return 0
    usage = message.usage  # type: ignore[attr-defined]
    total = int(usage.total_tokens) or int(usage.prompt_tokens) + int(usage.completion_tokens)
    return total
