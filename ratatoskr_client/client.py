"""gRPC transport: ``AsyncServiceClient`` (grpc.aio) and ``ServiceClient`` (blocking).

Both return domain types and raise the typed errors of ``errors.py``; the
status-code mapping is the shared table there, read in reverse.

Each RPC is described once, in the table below (``RPCS``): which client method
calls it, where the stubs find it, how its request is built and its answer
converted. The two clients differ only in how they wait (await or block), so a
new RPC or a changed conversion is one entry, not two methods kept in step.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, NoReturn, ParamSpec, TypeVar, cast

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ratatoskr_client import convert
from ratatoskr_client._proto.ratatoskr.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from ratatoskr_client.errors import RatatoskrError, Unavailable, error_for_code
from ratatoskr_client.paths import grpc_target
from ratatoskr_client.types import (
    BudgetStatus,
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
    PrivacyTier,
    ReloadResult,
    RenderedPrompt,
    ServerStatus,
    SwapResult,
    Task,
    TokenizeResult,
)

RETRY_AFTER_KEY = "retry-after"
REQUEST_ID_KEY = "x-request-id"
#: Trailing metadata naming the parameters the daemon dropped (parameters.policy = "warn").
DROPPED_PARAMETERS_KEY = "x-ratatoskr-dropped-parameters"
#: Trailing metadata saying what the context stage left out (``Truncation.summary()``).
TRUNCATED_KEY = "x-ratatoskr-truncated"
#: Trailing metadata: budgets the call brought to or past budget.warn_at (``Notes.budget_warning``).
BUDGET_WARNING_KEY = "x-ratatoskr-budget-warning"
#: Request metadata "on" (cache this deterministic chat answer, or serve it from the cache) or "off"
#: (bypass the response cache); trailing metadata: how many items were served from the cache.
CACHE_KEY = "x-ratatoskr-cache"
#: Trailing metadata: how often transient upstream failures were tried again (``Notes.retries``).
RETRIES_KEY = "x-ratatoskr-retries"
#: Trailing metadata: the route's candidates the call moved past, comma-separated (``Notes.failed_over``).
FAILED_OVER_KEY = "x-ratatoskr-failed-over"
#: Trailing metadata: streams resumed mid-answer on another candidate, comma-separated
#: ``from->to@at_char`` (``Notes.failovers``).
FAILOVER_KEY = "x-ratatoskr-failover"
#: Trailing metadata: the local candidate whose full queue sent the call elsewhere (``Notes.spilled_from``).
SPILLED_KEY = "x-ratatoskr-spilled"
#: Request metadata asking for a privacy tier (sovereign, private, standard); it can only tighten
#: what the daemon's setting and the caller's key allow.
PRIVACY_TIER_KEY = "x-ratatoskr-privacy-tier"

#: Embedding responses for big batches exceed gRPC's 4 MiB default.
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
]


#: A caller key for daemons that require one, when the client is not given ``api_key``.
API_KEY_ENV = "RATATOSKR_API_KEY"
Pem = str | os.PathLike[str] | bytes


@dataclass(frozen=True, slots=True)
class Transport:
    """How both clients reach a daemon: target, TLS credentials, and the metadata sent on every call.

    ``api_key`` (else ``$RATATOSKR_API_KEY``) travels as ``authorization: Bearer …``, ``privacy_tier``
    as ``x-ratatoskr-privacy-tier`` (it can only tighten the daemon's own tier). TLS is used when
    ``tls`` is set or any PEM is given: ``root_certificates`` (the CA that signed the daemon's
    certificate; None: the system's), and ``client_cert``/``client_key`` for mutual TLS. PEMs are
    file paths or their bytes.
    """

    target: str
    credentials: grpc.ChannelCredentials | None
    metadata: tuple[tuple[str, str], ...] | None

    @classmethod
    def build(
        cls,
        address: str | os.PathLike[str] | None,
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: Pem | None = None,
        client_cert: Pem | None = None,
        client_key: Pem | None = None,
        privacy_tier: PrivacyTier | None = None,
    ) -> Transport:
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        sent = [("authorization", f"Bearer {key}")] if key else []
        if privacy_tier is not None:
            sent.append((PRIVACY_TIER_KEY, PrivacyTier(privacy_tier).value))
        metadata = tuple(sent) or None
        credentials = None
        if tls or root_certificates is not None or client_cert is not None or client_key is not None:
            if (client_cert is None) != (client_key is None):
                raise ValueError("client_cert and client_key go together (mutual TLS): give both, or neither")
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_pem(root_certificates),
                private_key=_pem(client_key),
                certificate_chain=_pem(client_cert),
            )
        return cls(grpc_target(address), credentials, metadata)

    def sync_channel(self) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
        return grpc.secure_channel(self.target, self.credentials, options=_CHANNEL_OPTIONS)

    def aio_channel(self) -> grpc.aio.Channel:
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
        return grpc.aio.secure_channel(self.target, self.credentials, options=_CHANNEL_OPTIONS)


def _pem(value: Pem | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as file:
        return file.read()


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


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Out = TypeVar("Out")
P = ParamSpec("P")

GATEWAY = "ratatoskr.v1.Gateway"
ADMIN = "ratatoskr.v1.Admin"
HEALTH = "grpc.health.v1.Health"


@dataclass(frozen=True, slots=True)
class Unary(Generic[P, Req, Resp, Out]):
    """One request-response RPC, described once for both clients.

    ``name`` is the client method that calls it, ``service``/``method`` where the stubs find it,
    ``request`` builds the message from that method's arguments and ``response`` turns the answer
    into domain types. The clients only add their way of waiting (await or block).
    """

    name: str
    service: str
    method: str
    request: Callable[P, Req]
    response: Callable[[Resp], Out]


@dataclass(frozen=True, slots=True)
class ServerStream(Generic[P, Req, Resp]):
    """One server-streaming RPC of chat events; ``response`` converts each message, and None (a
    kind of event newer than this client) is skipped rather than taken for the end."""

    name: str
    service: str
    method: str
    request: Callable[P, Req]
    response: Callable[[Resp], ChatEvent | None]


def _tokenize_request(text: str, model: str, add_special_tokens: bool) -> gateway_pb2.TokenizeRequest:
    return gateway_pb2.TokenizeRequest(model=model, text=text, add_special_tokens=add_special_tokens)


def _count_tokens_request(texts: Sequence[str], model: str) -> gateway_pb2.CountTokensRequest:
    return gateway_pb2.CountTokensRequest(model=model, texts=list(texts))


def _render_request(
    messages: Sequence[Message], model: str, add_generation_prompt: bool
) -> gateway_pb2.RenderChatTemplateRequest:
    return gateway_pb2.RenderChatTemplateRequest(
        model=model, messages=[convert.message_to_pb(m) for m in messages], add_generation_prompt=add_generation_prompt
    )


def _chat_request(messages: Sequence[Message], options: ChatOptions | None) -> gateway_pb2.ChatRequest:
    return gateway_pb2.ChatRequest(
        messages=[convert.message_to_pb(m) for m in messages],
        options=convert.chat_options_to_pb(options or ChatOptions()),
    )


def _generate_request(prompt: str, options: ChatOptions | None) -> gateway_pb2.GenerateRequest:
    return gateway_pb2.GenerateRequest(prompt=prompt, options=convert.chat_options_to_pb(options or ChatOptions()))


def _list_models_request(task: Task | None, local_only: bool) -> gateway_pb2.ListModelsRequest:
    return gateway_pb2.ListModelsRequest(task=convert.task_to_pb(task), local_only=local_only)


def _models_from_pb(resp: gateway_pb2.ListModelsResponse) -> list[ModelMetadata]:
    return [convert.model_metadata_from_pb(m) for m in resp.models]


def _model_metadata_request(model: str) -> gateway_pb2.GetModelMetadataRequest:
    return gateway_pb2.GetModelMetadataRequest(model=model)


def _health_request(service: str) -> health_pb2.HealthCheckRequest:
    return health_pb2.HealthCheckRequest(service=service)


def _health_status_name(resp: health_pb2.HealthCheckResponse) -> str:
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def _status_request() -> admin_pb2.StatusRequest:
    return admin_pb2.StatusRequest()


def _reload_request() -> admin_pb2.ReloadRequest:
    return admin_pb2.ReloadRequest()


def _load_model_request(name: str) -> admin_pb2.LoadModelRequest:
    return admin_pb2.LoadModelRequest(model=name)


def _unload_model_request(name: str) -> admin_pb2.UnloadModelRequest:
    return admin_pb2.UnloadModelRequest(model=name)


def _unloaded(resp: admin_pb2.UnloadModelResponse) -> bool:
    return resp.unloaded


def _swap_model_request(name: str) -> admin_pb2.SwapModelRequest:
    return admin_pb2.SwapModelRequest(model=name)


def _list_loaded_models_request() -> admin_pb2.ListLoadedModelsRequest:
    return admin_pb2.ListLoadedModelsRequest()


def _loaded_models_from_pb(resp: admin_pb2.ListLoadedModelsResponse) -> list[LoadedModel]:
    return [convert.loaded_model_from_pb(m) for m in resp.models]


def _get_budget_request(scope: str = "") -> admin_pb2.GetBudgetRequest:
    return admin_pb2.GetBudgetRequest(scope=scope)


def _budgets_from_pb(resp: admin_pb2.GetBudgetResponse) -> list[BudgetStatus]:
    return [convert.budget_status_from_pb(b) for b in resp.scopes]


# The table: every RPC the clients offer, each once. tests/test_client_table.py holds it against
# the services' descriptors and both clients' methods.
EMBED = Unary("embed", GATEWAY, "Embed", convert.embed_request_to_pb, convert.embed_result_from_pb)
NLI = Unary("nli", GATEWAY, "Nli", convert.nli_request_to_pb, convert.nli_result_from_pb)
CLASSIFY = Unary("classify", GATEWAY, "Classify", convert.classify_request_to_pb, convert.classify_result_from_pb)
TOKENIZE = Unary("tokenize", GATEWAY, "Tokenize", _tokenize_request, convert.tokenize_result_from_pb)
COUNT_TOKENS = Unary("count_tokens", GATEWAY, "CountTokens", _count_tokens_request, convert.count_tokens_result_from_pb)
RENDER_CHAT_TEMPLATE = Unary(
    "render_chat_template", GATEWAY, "RenderChatTemplate", _render_request, convert.rendered_prompt_from_pb
)
CHAT = Unary("chat", GATEWAY, "Chat", _chat_request, convert.chat_result_from_pb)
CHAT_STREAM = ServerStream("chat_stream", GATEWAY, "ChatStream", _chat_request, convert.chat_event_from_pb)
GENERATE = Unary("generate", GATEWAY, "Generate", _generate_request, convert.generate_result_from_pb)
GENERATE_STREAM = ServerStream(
    "generate_stream", GATEWAY, "GenerateStream", _generate_request, convert.chat_event_from_pb
)
LIST_MODELS = Unary("list_models", GATEWAY, "ListModels", _list_models_request, _models_from_pb)
MODEL_METADATA = Unary(
    "model_metadata", GATEWAY, "GetModelMetadata", _model_metadata_request, convert.model_metadata_from_pb
)
HEALTH_CHECK = Unary("health", HEALTH, "Check", _health_request, _health_status_name)
STATUS = Unary("status", ADMIN, "Status", _status_request, convert.status_from_pb)
RELOAD = Unary("reload", ADMIN, "Reload", _reload_request, convert.reload_from_pb)
LOAD_MODEL = Unary("load_model", ADMIN, "LoadModel", _load_model_request, convert.loaded_model_from_pb)
UNLOAD_MODEL = Unary("unload_model", ADMIN, "UnloadModel", _unload_model_request, _unloaded)
SWAP_MODEL = Unary("swap_model", ADMIN, "SwapModel", _swap_model_request, convert.swap_from_pb)
LIST_LOADED_MODELS = Unary(
    "list_loaded_models", ADMIN, "ListLoadedModels", _list_loaded_models_request, _loaded_models_from_pb
)
GET_BUDGET = Unary("get_budget", ADMIN, "GetBudget", _get_budget_request, _budgets_from_pb)

RPCS: tuple[Unary[Any, Any, Any, Any] | ServerStream[Any, Any, Any], ...] = (
    EMBED,
    NLI,
    CLASSIFY,
    TOKENIZE,
    COUNT_TOKENS,
    RENDER_CHAT_TEMPLATE,
    CHAT,
    CHAT_STREAM,
    GENERATE,
    GENERATE_STREAM,
    LIST_MODELS,
    MODEL_METADATA,
    HEALTH_CHECK,
    STATUS,
    RELOAD,
    LOAD_MODEL,
    UNLOAD_MODEL,
    SWAP_MODEL,
    LIST_LOADED_MODELS,
    GET_BUDGET,
)


def _stubs(channel: grpc.Channel | grpc.aio.Channel) -> dict[str, object]:
    """The generated stub of each service the table names, on one channel."""
    return {
        GATEWAY: gateway_pb2_grpc.GatewayStub(channel),
        ADMIN: admin_pb2_grpc.AdminStub(channel),
        HEALTH: health_pb2_grpc.HealthStub(channel),
    }


class AsyncServiceClient:
    """A connection to a daemon over its Unix socket or TCP, for asyncio code; TLS and keys: ``Transport``."""

    def __init__(
        self,
        address: str | os.PathLike[str] | None = None,
        *,
        timeout: float | None = None,
        privacy_tier: PrivacyTier | None = None,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: Pem | None = None,
        client_cert: Pem | None = None,
        client_key: Pem | None = None,
    ) -> None:
        transport = Transport.build(
            address,
            api_key=api_key,
            tls=tls,
            root_certificates=root_certificates,
            client_cert=client_cert,
            client_key=client_key,
            privacy_tier=privacy_tier,
        )
        self.target = transport.target
        self.timeout = timeout
        self._metadata = transport.metadata
        self._channel = transport.aio_channel()
        self._stubs = _stubs(self._channel)

    async def _unary(
        self, rpc: Unary[P, Req, Resp, Out], timeout: float | None, *args: P.args, **kwargs: P.kwargs
    ) -> Out:
        method = cast("grpc.aio.UnaryUnaryMultiCallable[Req, Resp]", getattr(self._stubs[rpc.service], rpc.method))
        try:
            answer = await method(
                rpc.request(*args, **kwargs),
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            raise_for_rpc_error(err, self.target)
        return rpc.response(answer)

    async def _stream(
        self, rpc: ServerStream[P, Req, Resp], timeout: float | None, *args: P.args, **kwargs: P.kwargs
    ) -> AsyncIterator[ChatEvent]:
        method = cast("grpc.aio.UnaryStreamMultiCallable[Req, Resp]", getattr(self._stubs[rpc.service], rpc.method))
        call = method(
            rpc.request(*args, **kwargs),
            timeout=self.timeout if timeout is None else timeout,
            metadata=self._metadata,
        )
        try:
            async for message in call:
                known = rpc.response(message)
                if known is not None:
                    yield known
        except grpc.RpcError as err:
            raise_for_rpc_error(err, self.target)
        finally:
            call.cancel()  # a consumer that stops early closes the stream, and so the upstream

    async def embed(
        self,
        inputs: Sequence[str],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> EmbedResult:
        return await self._unary(EMBED, timeout, inputs, model, truncate)

    async def nli(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> NliResult:
        return await self._unary(NLI, timeout, pairs, model, truncate)

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
        return await self._unary(CLASSIFY, timeout, text, labels, model, multi_label, hypothesis_template)

    async def tokenize(
        self, text: str, *, model: str = "", add_special_tokens: bool = True, timeout: float | None = None
    ) -> TokenizeResult:
        return await self._unary(TOKENIZE, timeout, text, model, add_special_tokens)

    async def count_tokens(
        self, texts: Sequence[str], *, model: str = "", timeout: float | None = None
    ) -> CountTokensResult:
        return await self._unary(COUNT_TOKENS, timeout, texts, model)

    async def render_chat_template(
        self,
        messages: Sequence[Message],
        *,
        model: str,
        add_generation_prompt: bool = True,
        timeout: float | None = None,
    ) -> RenderedPrompt:
        return await self._unary(RENDER_CHAT_TEMPLATE, timeout, messages, model, add_generation_prompt)

    async def chat(
        self, messages: Sequence[Message], options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> ChatResult:
        return await self._unary(CHAT, timeout, messages, options)

    def chat_stream(
        self, messages: Sequence[Message], options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> AsyncIterator[ChatEvent]:
        return self._stream(CHAT_STREAM, timeout, messages, options)

    async def generate(
        self, prompt: str, options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> GenerateResult:
        return await self._unary(GENERATE, timeout, prompt, options)

    def generate_stream(
        self, prompt: str, options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> AsyncIterator[ChatEvent]:
        return self._stream(GENERATE_STREAM, timeout, prompt, options)

    async def list_models(self, *, task: Task | None = None, local_only: bool = False) -> list[ModelMetadata]:
        return await self._unary(LIST_MODELS, None, task, local_only)

    async def model_metadata(self, model: str) -> ModelMetadata:
        return await self._unary(MODEL_METADATA, None, model)

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The grpc.health.v1 status name: SERVING, NOT_SERVING, SERVICE_UNKNOWN."""
        return await self._unary(HEALTH_CHECK, timeout, service)

    async def status(self) -> ServerStatus:
        return await self._unary(STATUS, None)

    async def reload(self) -> ReloadResult:
        return await self._unary(RELOAD, None)

    async def load_model(self, name: str) -> LoadedModel:
        return await self._unary(LOAD_MODEL, None, name)

    async def unload_model(self, name: str) -> bool:
        return await self._unary(UNLOAD_MODEL, None, name)

    async def swap_model(self, name: str) -> SwapResult:
        """Serve the model's files as they are on disk now, without failing a call (Admin.SwapModel)."""
        return await self._unary(SWAP_MODEL, None, name)

    async def list_loaded_models(self) -> list[LoadedModel]:
        return await self._unary(LIST_LOADED_MODELS, None)

    async def get_budget(self, scope: str = "") -> list[BudgetStatus]:
        """Budgets in their current windows (limit, spent, reserved, window end); ``scope`` picks one."""
        return await self._unary(GET_BUDGET, None, scope)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncServiceClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class ServiceClient:
    """A blocking connection to a daemon, for code without an event loop. TLS and caller keys: see ``Transport``."""

    def __init__(
        self,
        address: str | os.PathLike[str] | None = None,
        *,
        timeout: float | None = None,
        privacy_tier: PrivacyTier | None = None,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: Pem | None = None,
        client_cert: Pem | None = None,
        client_key: Pem | None = None,
    ) -> None:
        transport = Transport.build(
            address,
            api_key=api_key,
            tls=tls,
            root_certificates=root_certificates,
            client_cert=client_cert,
            client_key=client_key,
            privacy_tier=privacy_tier,
        )
        self.target = transport.target
        self.timeout = timeout
        self._metadata = transport.metadata
        self._channel = transport.sync_channel()
        self._stubs = _stubs(self._channel)

    def _unary(self, rpc: Unary[P, Req, Resp, Out], timeout: float | None, *args: P.args, **kwargs: P.kwargs) -> Out:
        method = cast("grpc.UnaryUnaryMultiCallable[Req, Resp]", getattr(self._stubs[rpc.service], rpc.method))
        try:
            answer = method(
                rpc.request(*args, **kwargs),
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            raise_for_rpc_error(err, self.target)
        return rpc.response(answer)

    def _stream(
        self, rpc: ServerStream[P, Req, Resp], timeout: float | None, *args: P.args, **kwargs: P.kwargs
    ) -> Iterator[ChatEvent]:
        method = cast("grpc.UnaryStreamMultiCallable[Req, Resp]", getattr(self._stubs[rpc.service], rpc.method))
        call = method(
            rpc.request(*args, **kwargs),
            timeout=self.timeout if timeout is None else timeout,
            metadata=self._metadata,
        )
        try:
            for message in call:
                known = rpc.response(message)
                if known is not None:
                    yield known
        except grpc.RpcError as err:
            raise_for_rpc_error(err, self.target)
        finally:
            call.cancel()  # type: ignore[no-untyped-call]  # a consumer that stops early closes the stream, and so the upstream

    def embed(
        self,
        inputs: Sequence[str],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> EmbedResult:
        return self._unary(EMBED, timeout, inputs, model, truncate)

    def nli(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        model: str = "",
        truncate: bool = True,
        timeout: float | None = None,
    ) -> NliResult:
        return self._unary(NLI, timeout, pairs, model, truncate)

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
        return self._unary(CLASSIFY, timeout, text, labels, model, multi_label, hypothesis_template)

    def tokenize(
        self, text: str, *, model: str = "", add_special_tokens: bool = True, timeout: float | None = None
    ) -> TokenizeResult:
        return self._unary(TOKENIZE, timeout, text, model, add_special_tokens)

    def count_tokens(self, texts: Sequence[str], *, model: str = "", timeout: float | None = None) -> CountTokensResult:
        return self._unary(COUNT_TOKENS, timeout, texts, model)

    def render_chat_template(
        self,
        messages: Sequence[Message],
        *,
        model: str,
        add_generation_prompt: bool = True,
        timeout: float | None = None,
    ) -> RenderedPrompt:
        return self._unary(RENDER_CHAT_TEMPLATE, timeout, messages, model, add_generation_prompt)

    def chat(
        self, messages: Sequence[Message], options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> ChatResult:
        return self._unary(CHAT, timeout, messages, options)

    def chat_stream(
        self, messages: Sequence[Message], options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> Iterator[ChatEvent]:
        return self._stream(CHAT_STREAM, timeout, messages, options)

    def generate(
        self, prompt: str, options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> GenerateResult:
        return self._unary(GENERATE, timeout, prompt, options)

    def generate_stream(
        self, prompt: str, options: ChatOptions | None = None, *, timeout: float | None = None
    ) -> Iterator[ChatEvent]:
        return self._stream(GENERATE_STREAM, timeout, prompt, options)

    def list_models(self, *, task: Task | None = None, local_only: bool = False) -> list[ModelMetadata]:
        return self._unary(LIST_MODELS, None, task, local_only)

    def model_metadata(self, model: str) -> ModelMetadata:
        return self._unary(MODEL_METADATA, None, model)

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The grpc.health.v1 status name: SERVING, NOT_SERVING, SERVICE_UNKNOWN."""
        return self._unary(HEALTH_CHECK, timeout, service)

    def status(self) -> ServerStatus:
        return self._unary(STATUS, None)

    def reload(self) -> ReloadResult:
        return self._unary(RELOAD, None)

    def load_model(self, name: str) -> LoadedModel:
        return self._unary(LOAD_MODEL, None, name)

    def unload_model(self, name: str) -> bool:
        return self._unary(UNLOAD_MODEL, None, name)

    def swap_model(self, name: str) -> SwapResult:
        """Serve the model's files as they are on disk now, without failing a call (Admin.SwapModel)."""
        return self._unary(SWAP_MODEL, None, name)

    def list_loaded_models(self) -> list[LoadedModel]:
        return self._unary(LIST_LOADED_MODELS, None)

    def get_budget(self, scope: str = "") -> list[BudgetStatus]:
        """Budgets in their current windows (limit, spent, reserved, window end); ``scope`` picks one."""
        return self._unary(GET_BUDGET, None, scope)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


__all__ = ["AsyncServiceClient", "RatatoskrError", "ServiceClient", "raise_for_rpc_error"]
