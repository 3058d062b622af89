"""gRPC transport: ``AsyncServiceClient`` (grpc.aio) and ``ServiceClient`` (blocking).

Both return domain types and raise the typed errors of ``errors.py``; the
status-code mapping is the shared table there, read in reverse.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import Any, NoReturn, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ratatoskr_client import convert
from ratatoskr_client._proto.ratatoskr.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from ratatoskr_client.errors import RatatoskrError, Unavailable, error_for_code
from ratatoskr_client.paths import grpc_target
from ratatoskr_client.types import (
    ChatEvent,
    ChatOptions,
    ChatResult,
    ClassifyResult,
    CountTokensResult,
    EmbedResult,
    GenerateResult,
    LoadedModel,
    Message,
    ModelMetadata,
    NliResult,
    ReloadResult,
    ServerStatus,
    Task,
    TokenizeResult,
)

RETRY_AFTER_KEY = "retry-after"
REQUEST_ID_KEY = "x-request-id"
#: Trailing metadata naming the parameters the daemon dropped (parameters.policy = "warn").
DROPPED_PARAMETERS_KEY = "x-ratatoskr-dropped-parameters"

#: Embedding responses for big batches exceed gRPC's 4 MiB default.
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
]


#: What gRPC's client says when nothing accepted the connection (no daemon, or a stale socket).
_CONNECT_FAILED = "failed to connect to all addresses"


def _where(target: str) -> str:
    """The address as a person typed it: a socket path or host:port, without gRPC's scheme."""
    for scheme in ("unix:", "ipv4:", "ipv6:", "dns:"):
        if target.startswith(scheme):
            return target[len(scheme) :].lstrip("/") if scheme == "dns:" else target[len(scheme) :]
    return target


def raise_for_rpc_error(err: grpc.RpcError, target: str = "") -> NoReturn:
    """Re-raise a gRPC failure as the matching typed error.

    A connection nobody accepted becomes one sentence naming the address and the fix: the caller
    cannot act on gRPC's resolver and subchannel wording.
    """
    call: Any = err  # every RpcError the stubs raise is also a grpc.Call
    code: grpc.StatusCode = call.code()
    details: str = call.details() or code.name
    if target and code == grpc.StatusCode.UNAVAILABLE and _CONNECT_FAILED in details:
        raise Unavailable(f"no daemon is listening on {_where(target)}; start one with `ratatoskr serve`") from None
    retry_after: float | None = None
    for key, value in call.trailing_metadata() or ():
        if key == RETRY_AFTER_KEY:
            try:
                retry_after = float(value)
            except (TypeError, ValueError):
                retry_after = None
    raise error_for_code(code.name, details, retry_after_s=retry_after) from None


def _health_status_name(resp: health_pb2.HealthCheckResponse) -> str:
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


Req = TypeVar("Req")
Resp = TypeVar("Resp")


class AsyncServiceClient:
    """A connection to a daemon over its Unix socket or TCP, for asyncio code."""

    def __init__(self, address: str | os.PathLike[str] | None = None, *, timeout: float | None = None) -> None:
        self.target = grpc_target(address)
        self.timeout = timeout
        self._channel = grpc.aio.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
        self._gateway = gateway_pb2_grpc.GatewayStub(self._channel)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def _call(
        self, method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req, timeout: float | None = None
    ) -> Resp:
        try:
            return await method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as err:
            raise_for_rpc_error(err, self.target)

    async def embed(
        self,
        inputs: Sequence[str],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> EmbedResult:
        req = convert.embed_request_to_pb(inputs, model, truncate)
        return convert.embed_result_from_pb(await self._call(self._gateway.Embed, req, timeout))

    async def nli(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> NliResult:
        req = convert.nli_request_to_pb(pairs, model, truncate)
        return convert.nli_result_from_pb(await self._call(self._gateway.Nli, req, timeout))

    async def classify(
        self,
        text: str,
        labels: Sequence[str],
        *,
        model: str = "",
        multi_label: bool = False,
        hypothesis_template: str = "",
        timeout: float | None = None,
    ) -> ClassifyResult:
        req = convert.classify_request_to_pb(text, labels, model, multi_label, hypothesis_template)
        return convert.classify_result_from_pb(await self._call(self._gateway.Classify, req, timeout))

    async def tokenize(
        self, text: str, *, model: str = "", add_special_tokens: bool = True, timeout: float | None = None
    ) -> TokenizeResult:
        req = gateway_pb2.TokenizeRequest(model=model, text=text, add_special_tokens=add_special_tokens)
        return convert.tokenize_result_from_pb(await self._call(self._gateway.Tokenize, req, timeout))

    async def count_tokens(
        self, texts: Sequence[str], *, model: str = "", timeout: float | None = None
    ) -> CountTokensResult:
        req = gateway_pb2.CountTokensRequest(model=model, texts=list(texts))
        return convert.count_tokens_result_from_pb(await self._call(self._gateway.CountTokens, req, timeout))

    async def chat(
        self, messages: Sequence[Message], options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> ChatResult:
        req = gateway_pb2.ChatRequest(
            messages=[convert.message_to_pb(m) for m in messages],
            options=convert.chat_options_to_pb(options or ChatOptions()),
        )
        return convert.chat_result_from_pb(await self._call(self._gateway.Chat, req, timeout))

    async def chat_stream(
        self, messages: Sequence[Message], options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> AsyncIterator[ChatEvent]:
        req = gateway_pb2.ChatRequest(
            messages=[convert.message_to_pb(m) for m in messages],
            options=convert.chat_options_to_pb(options or ChatOptions()),
        )
        call = self._gateway.ChatStream(req, timeout=self.timeout if timeout is None else timeout)
        try:
            async for event in call:
                known = convert.chat_event_from_pb(event)
                if known is not None:
                    yield known
        except grpc.RpcError as err:
            raise_for_rpc_error(err, self.target)
        finally:
            call.cancel()  # a consumer that stops early closes the stream, and so the upstream

    async def generate(
        self, prompt: str, options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> GenerateResult:
        req = gateway_pb2.GenerateRequest(prompt=prompt, options=convert.chat_options_to_pb(options or ChatOptions()))
        return convert.generate_result_from_pb(await self._call(self._gateway.Generate, req, timeout))

    async def generate_stream(
        self, prompt: str, options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> AsyncIterator[ChatEvent]:
        req = gateway_pb2.GenerateRequest(prompt=prompt, options=convert.chat_options_to_pb(options or ChatOptions()))
        call = self._gateway.GenerateStream(req, timeout=self.timeout if timeout is None else timeout)
        try:
            async for event in call:
                known = convert.chat_event_from_pb(event)
                if known is not None:
                    yield known
        except grpc.RpcError as err:
            raise_for_rpc_error(err, self.target)
        finally:
            call.cancel()

    async def list_models(self, *, task: Task | None = None, local_only: bool = False) -> list[ModelMetadata]:
        req = gateway_pb2.ListModelsRequest(task=convert.task_to_pb(task), local_only=local_only)
        resp = await self._call(self._gateway.ListModels, req)
        return [convert.model_metadata_from_pb(m) for m in resp.models]

    async def model_metadata(self, model: str) -> ModelMetadata:
        req = gateway_pb2.GetModelMetadataRequest(model=model)
        return convert.model_metadata_from_pb(await self._call(self._gateway.GetModelMetadata, req))

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The grpc.health.v1 status name: SERVING, NOT_SERVING, SERVICE_UNKNOWN."""
        req = health_pb2.HealthCheckRequest(service=service)
        return _health_status_name(await self._call(self._health.Check, req, timeout))

    async def status(self) -> ServerStatus:
        return convert.status_from_pb(await self._call(self._admin.Status, admin_pb2.StatusRequest()))

    async def reload(self) -> ReloadResult:
        return convert.reload_from_pb(await self._call(self._admin.Reload, admin_pb2.ReloadRequest()))

    async def load_model(self, name: str) -> LoadedModel:
        resp = await self._call(self._admin.LoadModel, admin_pb2.LoadModelRequest(model=name))
        return convert.loaded_model_from_pb(resp)

    async def unload_model(self, name: str) -> bool:
        return (await self._call(self._admin.UnloadModel, admin_pb2.UnloadModelRequest(model=name))).unloaded

    async def list_loaded_models(self) -> list[LoadedModel]:
        resp = await self._call(self._admin.ListLoadedModels, admin_pb2.ListLoadedModelsRequest())
        return [convert.loaded_model_from_pb(m) for m in resp.models]

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncServiceClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class ServiceClient:
    """A blocking connection to a daemon, for code without an event loop."""

    def __init__(self, address: str | os.PathLike[str] | None = None, *, timeout: float | None = None) -> None:
        self.target = grpc_target(address)
        self.timeout = timeout
        self._channel = grpc.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
        self._gateway = gateway_pb2_grpc.GatewayStub(self._channel)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def _call(
        self, method: grpc.UnaryUnaryMultiCallable[Req, Resp], request: Req, timeout: float | None = None
    ) -> Resp:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as err:
            raise_for_rpc_error(err, self.target)

    def embed(
        self,
        inputs: Sequence[str],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> EmbedResult:
        req = convert.embed_request_to_pb(inputs, model, truncate)
        return convert.embed_result_from_pb(self._call(self._gateway.Embed, req, timeout))

    def nli(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> NliResult:
        req = convert.nli_request_to_pb(pairs, model, truncate)
        return convert.nli_result_from_pb(self._call(self._gateway.Nli, req, timeout))

    def classify(
        self,
        text: str,
        labels: Sequence[str],
        *,
        model: str = "",
        multi_label: bool = False,
        hypothesis_template: str = "",
        timeout: float | None = None,
    ) -> ClassifyResult:
        req = convert.classify_request_to_pb(text, labels, model, multi_label, hypothesis_template)
        return convert.classify_result_from_pb(self._call(self._gateway.Classify, req, timeout))

    def tokenize(
        self, text: str, *, model: str = "", add_special_tokens: bool = True, timeout: float | None = None
    ) -> TokenizeResult:
        req = gateway_pb2.TokenizeRequest(model=model, text=text, add_special_tokens=add_special_tokens)
        return convert.tokenize_result_from_pb(self._call(self._gateway.Tokenize, req, timeout))

    def count_tokens(self, texts: Sequence[str], *, model: str = "", timeout: float | None = None) -> CountTokensResult:
        req = gateway_pb2.CountTokensRequest(model=model, texts=list(texts))
        return convert.count_tokens_result_from_pb(self._call(self._gateway.CountTokens, req, timeout))

    def chat(
        self, messages: Sequence[Message], options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> ChatResult:
        req = gateway_pb2.ChatRequest(
            messages=[convert.message_to_pb(m) for m in messages],
            options=convert.chat_options_to_pb(options or ChatOptions()),
        )
        return convert.chat_result_from_pb(self._call(self._gateway.Chat, req, timeout))

    def chat_stream(
        self, messages: Sequence[Message], options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> Iterator[ChatEvent]:
        req = gateway_pb2.ChatRequest(
            messages=[convert.message_to_pb(m) for m in messages],
            options=convert.chat_options_to_pb(options or ChatOptions()),
        )
        call = self._gateway.ChatStream(req, timeout=self.timeout if timeout is None else timeout)
        try:
            for event in call:
                known = convert.chat_event_from_pb(event)
                if known is not None:
                    yield known
        except grpc.RpcError as err:
            raise_for_rpc_error(err, self.target)
        finally:
            call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leave it untyped  # a consumer that stops early closes the stream, and so the upstream

    def generate(
        self, prompt: str, options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> GenerateResult:
        req = gateway_pb2.GenerateRequest(prompt=prompt, options=convert.chat_options_to_pb(options or ChatOptions()))
        return convert.generate_result_from_pb(self._call(self._gateway.Generate, req, timeout))

    def generate_stream(
        self, prompt: str, options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> Iterator[ChatEvent]:
        req = gateway_pb2.GenerateRequest(prompt=prompt, options=convert.chat_options_to_pb(options or ChatOptions()))
        call = self._gateway.GenerateStream(req, timeout=self.timeout if timeout is None else timeout)
        try:
            for event in call:
                known = convert.chat_event_from_pb(event)
                if known is not None:
                    yield known
        except grpc.RpcError as err:
            raise_for_rpc_error(err, self.target)
        finally:
            call.cancel()  # type: ignore[no-untyped-call]

    def list_models(self, *, task: Task | None = None, local_only: bool = False) -> list[ModelMetadata]:
        req = gateway_pb2.ListModelsRequest(task=convert.task_to_pb(task), local_only=local_only)
        resp = self._call(self._gateway.ListModels, req)
        return [convert.model_metadata_from_pb(m) for m in resp.models]

    def model_metadata(self, model: str) -> ModelMetadata:
        req = gateway_pb2.GetModelMetadataRequest(model=model)
        return convert.model_metadata_from_pb(self._call(self._gateway.GetModelMetadata, req))

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The grpc.health.v1 status name: SERVING, NOT_SERVING, SERVICE_UNKNOWN."""
        req = health_pb2.HealthCheckRequest(service=service)
        return _health_status_name(self._call(self._health.Check, req, timeout))

    def status(self) -> ServerStatus:
        return convert.status_from_pb(self._call(self._admin.Status, admin_pb2.StatusRequest()))

    def reload(self) -> ReloadResult:
        return convert.reload_from_pb(self._call(self._admin.Reload, admin_pb2.ReloadRequest()))

    def load_model(self, name: str) -> LoadedModel:
        return convert.loaded_model_from_pb(self._call(self._admin.LoadModel, admin_pb2.LoadModelRequest(model=name)))

    def unload_model(self, name: str) -> bool:
        return self._call(self._admin.UnloadModel, admin_pb2.UnloadModelRequest(model=name)).unloaded

    def list_loaded_models(self) -> list[LoadedModel]:
        resp = self._call(self._admin.ListLoadedModels, admin_pb2.ListLoadedModelsRequest())
        return [convert.loaded_model_from_pb(m) for m in resp.models]

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


__all__ = ["AsyncServiceClient", "RatatoskrError", "ServiceClient", "raise_for_rpc_error"]
