"""gRPC servicers: decode the request, call the gateway or daemon, encode the answer.

No decisions live here; each method is protobuf conversion around one call,
run through the ``Edge`` so limits, status codes, metrics and logs are uniform.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Protocol

import grpc.aio

from ratatoskr_client import convert
from ratatoskr_client._proto.ratatoskr.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc, types_pb2
from ratatoskr_client.types import ReloadResult, ServerStatus, Timing
from ratatoskr_server.gateway import Gateway
from ratatoskr_server.rpc.edge import Edge

Context = grpc.aio.ServicerContext[object, object]

_NO_REGISTRY = "per-model metadata (parameters, prices, context windows) is not built yet; ListModels lists every model"


class DaemonControl(Protocol):
    """What the Admin service needs from the process that hosts it."""

    def status(self) -> ServerStatus: ...

    async def reload(self) -> ReloadResult: ...


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, gateway: Gateway, edge: Edge) -> None:
        self.gateway = gateway
        self.edge = edge

    async def Embed(self, request: gateway_pb2.EmbedRequest, context: Context) -> gateway_pb2.EmbedResponse:
        inputs, model, truncate = convert.embed_request_from_pb(request)

        async def run() -> gateway_pb2.EmbedResponse:
            result = await self.gateway.embed(inputs, model=model, truncate=truncate, timeout=context.time_remaining())
            label = self.edge.metrics.model_label(result.model)
            self.edge.metrics.embedded_inputs.labels(model=label).inc(len(inputs))
            self.edge.metrics.input_tokens.labels(model=label).inc(result.timing.input_tokens)
            return convert.embed_result_to_pb(result)

        return await self.edge.call(
            "Embed", context, run, model=model or self.gateway.settings.local.default_embed_model
        )

    async def Chat(self, request: gateway_pb2.ChatRequest, context: Context) -> gateway_pb2.ChatResponse:
        messages = [convert.message_from_pb(m) for m in request.messages]

        async def run() -> gateway_pb2.ChatResponse:
            options = convert.chat_options_from_pb(request.options)
            result = await self.gateway.chat(messages, options, timeout=context.time_remaining())
            return convert.chat_result_to_pb(result)

        return await self.edge.call("Chat", context, run, model=request.options.model)

    async def ChatStream(
        self, request: gateway_pb2.ChatRequest, context: Context
    ) -> AsyncIterator[types_pb2.ChatEvent]:
        messages = [convert.message_from_pb(m) for m in request.messages]

        async def events() -> AsyncIterator[types_pb2.ChatEvent]:
            options = convert.chat_options_from_pb(request.options)
            async for event in self.gateway.chat_stream(messages, options, timeout=context.time_remaining()):
                yield convert.chat_event_to_pb(event)

        async for message in self.edge.stream("ChatStream", context, events, model=request.options.model):
            yield message

    async def Generate(self, request: gateway_pb2.GenerateRequest, context: Context) -> gateway_pb2.GenerateResponse:
        async def run() -> gateway_pb2.GenerateResponse:
            options = convert.chat_options_from_pb(request.options)
            result = await self.gateway.generate(request.prompt, options, timeout=context.time_remaining())
            return convert.generate_result_to_pb(result)

        return await self.edge.call("Generate", context, run, model=request.options.model)

    async def GenerateStream(
        self, request: gateway_pb2.GenerateRequest, context: Context
    ) -> AsyncIterator[types_pb2.ChatEvent]:
        async def events() -> AsyncIterator[types_pb2.ChatEvent]:
            options = convert.chat_options_from_pb(request.options)
            async for event in self.gateway.generate_stream(request.prompt, options, timeout=context.time_remaining()):
                yield convert.chat_event_to_pb(event)

        async for message in self.edge.stream("GenerateStream", context, events, model=request.options.model):
            yield message

    async def Nli(self, request: gateway_pb2.NliRequest, context: Context) -> gateway_pb2.NliResponse:
        pairs, model, truncate = convert.nli_request_from_pb(request)

        async def run() -> gateway_pb2.NliResponse:
            result = await self.gateway.nli(pairs, model=model, truncate=truncate, timeout=context.time_remaining())
            return convert.nli_result_to_pb(result)

        return await self.edge.call("Nli", context, run, model=model or self.gateway.settings.local.default_nli_model)

    async def Classify(self, request: gateway_pb2.ClassifyRequest, context: Context) -> gateway_pb2.ClassifyResponse:
        async def run() -> gateway_pb2.ClassifyResponse:
            result = await self.gateway.classify(
                request.text,
                list(request.candidate_labels),
                model=request.model,
                multi_label=request.multi_label,
                hypothesis_template=request.hypothesis_template,
                timeout=context.time_remaining(),
            )
            return convert.classify_result_to_pb(result)

        model = request.model or self.gateway.settings.local.default_classify_model
        return await self.edge.call("Classify", context, run, model=model)

    async def CountTokens(
        self, request: gateway_pb2.CountTokensRequest, context: Context
    ) -> gateway_pb2.CountTokensResponse:
        async def run() -> gateway_pb2.CountTokensResponse:
            if request.messages:
                result = await self.gateway.count_message_tokens(model=request.model)
            else:
                result = await self.gateway.count_tokens(list(request.texts), model=request.model)
            return convert.count_tokens_result_to_pb(result)

        return await self.edge.call("CountTokens", context, run, model=request.model)

    async def Tokenize(self, request: gateway_pb2.TokenizeRequest, context: Context) -> gateway_pb2.TokenizeResponse:
        async def run() -> gateway_pb2.TokenizeResponse:
            result = await self.gateway.tokenize(
                request.text, model=request.model, add_special_tokens=request.add_special_tokens
            )
            return convert.tokenize_result_to_pb(result)

        return await self.edge.call("Tokenize", context, run, model=request.model)

    async def ListModels(
        self, request: gateway_pb2.ListModelsRequest, context: Context
    ) -> gateway_pb2.ListModelsResponse:
        async def run() -> gateway_pb2.ListModelsResponse:
            started = time.perf_counter()
            task = convert.task_from_pb(request.task)
            models = await self.gateway.list_models(task=task, local_only=request.local_only)
            elapsed = (time.perf_counter() - started) * 1000
            return gateway_pb2.ListModelsResponse(
                models=[convert.model_metadata_to_pb(m) for m in models],
                timing=convert.timing_to_pb(Timing(total_ms=elapsed)),
            )

        return await self.edge.call("ListModels", context, run, limited=False)

    async def GetModelMetadata(
        self, request: gateway_pb2.GetModelMetadataRequest, context: Context
    ) -> types_pb2.ModelMetadata:
        async def run() -> types_pb2.ModelMetadata:
            return convert.model_metadata_to_pb(await self.gateway.model_metadata(request.model))

        return await self.edge.call("GetModelMetadata", context, run, model=request.model, limited=False)

    async def RenderChatTemplate(
        self, request: gateway_pb2.RenderChatTemplateRequest, context: Context
    ) -> gateway_pb2.RenderChatTemplateResponse:
        await self.edge.unimplemented(
            "RenderChatTemplate", context, "chat templates per model family are not built yet"
        )


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, gateway: Gateway, daemon: DaemonControl, edge: Edge) -> None:
        self.gateway = gateway
        self.daemon = daemon
        self.edge = edge

    async def Status(self, request: admin_pb2.StatusRequest, context: Context) -> admin_pb2.StatusResponse:
        async def run() -> admin_pb2.StatusResponse:
            return convert.status_to_pb(self.daemon.status())

        return await self.edge.call("Status", context, run, limited=False)

    async def Reload(self, request: admin_pb2.ReloadRequest, context: Context) -> admin_pb2.ReloadResponse:
        async def run() -> admin_pb2.ReloadResponse:
            return convert.reload_to_pb(await self.daemon.reload())

        return await self.edge.call("Reload", context, run, limited=False)

    async def LoadModel(self, request: admin_pb2.LoadModelRequest, context: Context) -> admin_pb2.LoadedModel:
        async def run() -> admin_pb2.LoadedModel:
            return convert.loaded_model_to_pb(await self.gateway.load_model(request.model))

        return await self.edge.call("LoadModel", context, run, model=request.model)

    async def UnloadModel(
        self, request: admin_pb2.UnloadModelRequest, context: Context
    ) -> admin_pb2.UnloadModelResponse:
        async def run() -> admin_pb2.UnloadModelResponse:
            unloaded = await self.gateway.unload_model(request.model)
            message = "unloaded" if unloaded else "the model was not loaded"
            return admin_pb2.UnloadModelResponse(unloaded=unloaded, message=message)

        return await self.edge.call("UnloadModel", context, run, model=request.model, limited=False)

    async def ListLoadedModels(
        self, request: admin_pb2.ListLoadedModelsRequest, context: Context
    ) -> admin_pb2.ListLoadedModelsResponse:
        async def run() -> admin_pb2.ListLoadedModelsResponse:
            models = self.gateway.loaded_models()
            # The budget counts file footprints (see local/pool.py), so "used" does too.
            return admin_pb2.ListLoadedModelsResponse(
                models=[convert.loaded_model_to_pb(m) for m in models],
                memory_budget_mb=self.gateway.settings.local.memory_budget_mb,
                memory_used_mb=self.gateway.pool.used_mb(),
            )

        return await self.edge.call("ListLoadedModels", context, run, limited=False)

    async def GetBudget(self, request: admin_pb2.GetBudgetRequest, context: Context) -> admin_pb2.GetBudgetResponse:
        await self.edge.unimplemented("GetBudget", context, "cost budgets are not built yet")
