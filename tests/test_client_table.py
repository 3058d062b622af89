"""One table of RPCs behind both gRPC clients, held against the services and the clients' methods.

``ratatoskr_client.client.RPCS`` describes each RPC once (client method, service, stub
attribute, request builder, response converter); ``AsyncServiceClient`` and ``ServiceClient``
only wait differently. These tests keep that table honest: every entry is a real RPC of the
generated services with the right shape, every Gateway and Admin RPC is offered exactly once (or
is on the short list of RPCs the clients knowingly leave out), both clients offer the same
methods with the same parameters, and each method sends its entry's request and converts its
answer, the same way on both clients.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message as PbMessage
from grpc_health.v1 import health_pb2

from ratatoskr_client import client as client_module
from ratatoskr_client._proto.ratatoskr.v1 import admin_pb2, gateway_pb2
from ratatoskr_client.client import PRIVACY_TIER_KEY, RPCS, AsyncServiceClient, ServerStream, ServiceClient, Unary
from ratatoskr_client.protocol import ModelGateway, SyncModelGateway
from ratatoskr_client.types import ChatOptions, Message, PrivacyTier, Task

GATEWAY = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]
ADMIN = admin_pb2.DESCRIPTOR.services_by_name["Admin"]
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
SERVICES: dict[str, ServiceDescriptor] = {s.full_name: s for s in (GATEWAY, ADMIN, HEALTH)}

#: Gateway and Admin RPCs the clients do not offer (yet). A new RPC fails the coverage test until
#: it is added to the table (and so to both clients) or named here.
NOT_OFFERED: set[tuple[str, str]] = set()

#: Methods that are not RPCs.
LIFECYCLE = {"close"}

#: Arguments for one call of each client method, the same for both clients.
SAMPLE_CALLS: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "embed": ((["a", "b"],), {"model": "m", "truncate": False, "timeout": 3.0}),
    "nli": (([("p", "h")],), {"model": "m", "truncate": False}),
    "classify": (("text", ["x", "y"]), {"model": "m", "multi_label": True, "hypothesis_template": "It is {}."}),
    "tokenize": (("text",), {"model": "m", "add_special_tokens": False}),
    "count_tokens": ((["a", "bc"],), {"model": "m"}),
    "render_chat_template": (([Message("user", "hi")],), {"model": "p/m", "add_generation_prompt": False}),
    "chat": (([Message("user", "hi")], ChatOptions(model="p/m", max_tokens=5)), {}),
    "chat_stream": (([Message("user", "hi")], ChatOptions(model="p/m")), {}),
    "generate": (("once upon", ChatOptions(model="p/m")), {}),
    "generate_stream": (("once upon",), {}),
    "list_models": ((), {"task": Task.EMBED, "local_only": True}),
    "model_metadata": (("p/m",), {}),
    "health": (("ratatoskr.v1.Gateway",), {}),
    "status": ((), {}),
    "reload": ((), {}),
    "load_model": (("m",), {}),
    "swap_model": (("m",), {}),
    "unload_model": (("m",), {}),
    "list_loaded_models": ((), {}),
    "get_budget": (("global",), {}),
}


def _descriptor(rpc: Unary[Any, Any, Any, Any] | ServerStream[Any, Any, Any]) -> MethodDescriptor:
    assert rpc.service in SERVICES, f"{rpc.name}: no service {rpc.service}"
    method = SERVICES[rpc.service].methods_by_name.get(rpc.method)
    assert method is not None, f"{rpc.name}: {rpc.service} has no RPC {rpc.method}"
    return method


def _public_methods(cls: type) -> dict[str, Any]:
    return {name: value for name, value in vars(cls).items() if callable(value) and not name.startswith("_")}


def test_every_entry_is_a_real_rpc_of_the_right_shape() -> None:
    for rpc in RPCS:
        method = _descriptor(rpc)
        assert not method.client_streaming, rpc.name
        assert method.server_streaming == isinstance(rpc, ServerStream), rpc.name
    assert [k for k, n in Counter((r.service, r.method) for r in RPCS).items() if n > 1] == []
    assert [k for k, n in Counter(r.name for r in RPCS).items() if n > 1] == []


def test_every_entry_is_one_of_the_tables_constants() -> None:
    """``RPCS`` lists every entry the module defines, so a method cannot use one the tests miss."""
    defined = [v for v in vars(client_module).values() if isinstance(v, Unary | ServerStream)]
    assert Counter(map(id, defined)) == Counter(map(id, RPCS))


@pytest.mark.parametrize("service", [GATEWAY, ADMIN], ids=lambda s: s.name)
def test_every_gateway_and_admin_rpc_is_offered_once(service: ServiceDescriptor) -> None:
    offered = Counter((r.service, r.method) for r in RPCS)
    for method in service.methods:
        key = (service.full_name, method.name)
        if key in NOT_OFFERED:
            assert offered[key] == 0, f"{method.name} is offered: take it off NOT_OFFERED"
        else:
            assert offered[key] == 1, f"{method.name} is neither in the client table nor in NOT_OFFERED"
    for key in NOT_OFFERED:
        assert SERVICES[key[0]].methods_by_name.get(key[1]) is not None, f"NOT_OFFERED names no RPC: {key}"


def test_both_clients_offer_the_tables_methods_with_the_same_parameters() -> None:
    sync_methods = _public_methods(ServiceClient)
    async_methods = _public_methods(AsyncServiceClient)
    assert set(sync_methods) == set(async_methods) == {r.name for r in RPCS} | LIFECYCLE
    for name, sync_method in sync_methods.items():
        sync_params = inspect.signature(sync_method).parameters
        async_params = inspect.signature(async_methods[name]).parameters
        assert list(sync_params.values()) == list(async_params.values()), name
    for rpc in RPCS:
        # Unary calls are awaited; streams are iterated, so their method is a plain function.
        assert inspect.iscoroutinefunction(async_methods[rpc.name]) == isinstance(rpc, Unary), rpc.name
    assert set(SAMPLE_CALLS) == {r.name for r in RPCS}


# -- each method calls its own entry, the same way on both clients --------------------------------


class _Recorder:
    """Stands in for the generated stubs: records each call and answers with an empty message."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, PbMessage, float | None]] = []
        #: The request metadata each call carried (the privacy ask).
        self.metadata: list[Any] = []

    def answer(
        self, service: str, method: str, request: PbMessage, timeout: float | None, metadata: Any = None
    ) -> PbMessage:
        descriptor = SERVICES[service].methods_by_name[method]
        assert isinstance(request, message_factory.GetMessageClass(descriptor.input_type)), (method, request)
        self.calls.append((service, method, request, timeout))
        self.metadata.append(metadata)
        return message_factory.GetMessageClass(descriptor.output_type)()


class _Stream:
    def __init__(self, messages: list[PbMessage]) -> None:
        self._messages = messages
        self.cancelled = False

    def __iter__(self) -> Iterator[PbMessage]:
        return iter(self._messages)

    async def __aiter__(self) -> AsyncIterator[PbMessage]:
        for message in self._messages:
            yield message

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class _FakeStub:
    def __init__(self, service: str, recorder: _Recorder, *, aio: bool) -> None:
        self._service = service
        self._recorder = recorder
        self._aio = aio

    def __getattr__(self, method: str) -> Any:
        descriptor = SERVICES[self._service].methods_by_name[method]
        service, recorder = self._service, self._recorder

        if descriptor.server_streaming:

            def stream(request: PbMessage, timeout: float | None = None, metadata: Any = None) -> _Stream:
                return _Stream([recorder.answer(service, method, request, timeout, metadata)])

            return stream

        if self._aio:

            async def unary_async(request: PbMessage, timeout: float | None = None, metadata: Any = None) -> PbMessage:
                return recorder.answer(service, method, request, timeout, metadata)

            return unary_async

        def unary(request: PbMessage, timeout: float | None = None, metadata: Any = None) -> PbMessage:
            return recorder.answer(service, method, request, timeout, metadata)

        return unary


def _fake(client: ServiceClient | AsyncServiceClient, *, aio: bool) -> _Recorder:
    recorder = _Recorder()
    client._stubs = {service: _FakeStub(service, recorder, aio=aio) for service in SERVICES}
    return recorder


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.name)
async def test_each_method_calls_its_entry_the_same_way_on_both_clients(
    rpc: Unary[Any, Any, Any, Any] | ServerStream[Any, Any, Any],
) -> None:
    args, kwargs = SAMPLE_CALLS[rpc.name]
    sync_client = ServiceClient(
        "/nonexistent/ratatoskr.sock", timeout=7.0, privacy_tier=PrivacyTier.PRIVATE, api_key="rtk_k"
    )
    async_client = AsyncServiceClient(
        "/nonexistent/ratatoskr.sock", timeout=7.0, privacy_tier=PrivacyTier.PRIVATE, api_key="rtk_k"
    )
    try:
        sync_calls = _fake(sync_client, aio=False)
        async_calls = _fake(async_client, aio=True)
        sync_method = getattr(sync_client, rpc.name)
        async_method = getattr(async_client, rpc.name)
        if isinstance(rpc, ServerStream):
            sync_result: Any = list(sync_method(*args, **kwargs))
            async_result: Any = [event async for event in async_method(*args, **kwargs)]
        else:
            sync_result = sync_method(*args, **kwargs)
            async_result = await async_method(*args, **kwargs)
    finally:
        sync_client.close()
        await async_client.close()
    assert [(s, m) for s, m, _, _ in sync_calls.calls] == [(rpc.service, rpc.method)]
    assert sync_calls.calls == async_calls.calls  # the same request, and the same deadline
    _, _, request, timeout = sync_calls.calls[0]
    assert request == rpc.request(*_positional(rpc, args, kwargs))
    assert timeout == kwargs.get("timeout", 7.0)  # the call's own deadline, else the client's
    assert sync_result == async_result
    # The key and the privacy ask ride on every call, sync and async alike.
    expected = [(("authorization", "Bearer rtk_k"), (PRIVACY_TIER_KEY, "private"))]
    assert sync_calls.metadata == async_calls.metadata == expected


def _positional(
    rpc: Unary[Any, Any, Any, Any] | ServerStream[Any, Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[Any]:
    """The client method's arguments, defaults filled in, in order, without the deadline."""
    bound = inspect.signature(getattr(ServiceClient, rpc.name)).bind(None, *args, **kwargs)
    bound.apply_defaults()
    return [v for k, v in bound.arguments.items() if k not in ("self", "timeout")]


def test_the_clients_still_satisfy_the_gateway_protocols() -> None:
    assert issubclass(AsyncServiceClient, ModelGateway)
    assert issubclass(ServiceClient, SyncModelGateway)
