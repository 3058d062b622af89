"""A client facing a newer daemon: event kinds it does not know are skipped, never read as the end."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc.aio

from ratatoskr_client import AsyncServiceClient
from ratatoskr_client._proto.ratatoskr.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2
from ratatoskr_client.types import ContentDelta, Done, Message
from tests.conftest import short_dir


class _NewerGateway(gateway_pb2_grpc.GatewayServicer):
    async def ChatStream(  # type: ignore[override]
        self, request: gateway_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[types_pb2.ChatEvent]:
        event = types_pb2.ChatEvent
        yield event(content=event.ContentDelta(text="one "))
        yield event()  # a kind added after this client was built arrives with no field it knows
        yield event(content=event.ContentDelta(text="two"))
        yield event(done=event.Done(finish_reason="stop", provider="p", model="m"))


async def test_unknown_stream_events_are_skipped_not_taken_for_done() -> None:
    path = short_dir() / "newer.sock"
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServicer_to_server(_NewerGateway(), server)
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    try:
        async with AsyncServiceClient(path, timeout=10) as client:
            events = [e async for e in client.chat_stream([Message("user", "hi")])]
    finally:
        await server.stop(0)
    assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == "one two"
    assert len(events) == 3 and isinstance(events[-1], Done)
