"""gRPC servicers: decode the request, call the gateway or daemon, encode the answer.

No decisions live here; each method is protobuf conversion around one call, run through the
transport-neutral ``Edge`` (the same one the embedded gateway uses) by ``status.unary`` /
``status.stream``, which own the gRPC status table and trailing metadata.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from ratatoskr_client import convert
from ratatoskr_client._proto.ratatoskr.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc, types_pb2
from ratatoskr_client.types import ReloadResult, ServerStatus, Timing
from ratatoskr_server.context import RequestContext
from ratatoskr_server.fronts.grpc.status import Context, Front, stream, unary
from ratatoskr_server.gateway import Gateway


class DaemonControl(Protocol):
    """What the Admin service needs from the process that hosts it."""

    def status(self) -> ServerStatus: ...

    async def reload(self) -> ReloadResult: ...


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, gateway: Gateway, front: Front) -> None:
        self.gateway = gateway
        self.front = front

    async def Embed(self, request: gateway_pb2.EmbedRequest, context: Context) -> gateway_pb2.EmbedResponse:
        inputs, model, truncate = convert.embed_request_from_pb(request)

        async def run(ctx: RequestContext) -> gateway_pb2.EmbedResponse:
            return convert.embed_result_to_pb(await self.gateway.embed(ctx, inputs, model=model, truncate=truncate))

        return await unary(self.front, "Embed", context, run, model=model or self.gateway.default_model("embed"))

    async def Chat(self, request: gateway_pb2.ChatRequest, context: Context) -> gateway_pb2.ChatResponse:
        async def run(ctx: RequestContext) -> gateway_pb2.ChatResponse:
            messages = [convert.message_from_pb(m) for m in request.messages]
            options = convert.chat_options_from_pb(request.options)
            return convert.chat_result_to_pb(await self.gateway.chat(ctx, messages, options))

        return await unary(self.front, "Chat", context, run, model=request.options.model)

    async def ChatStream(
        self, request: gateway_pb2.ChatRequest, context: Context
    ) -> AsyncIterator[types_pb2.ChatEvent]:
        async def events(ctx: RequestContext) -> AsyncIterator[types_pb2.ChatEvent]:
            messages = [convert.message_from_pb(m) for m in request.messages]
            options = convert.chat_options_from_pb(request.options)
            async for event in self.gateway.chat_stream(ctx, messages, options):
                yield convert.chat_event_to_pb(event)

        async for message in stream(self.front, "ChatStream", context, events, model=request.options.model):
            yield message

    async def Generate(self, request: gateway_pb2.GenerateRequest, context: Context) -> gateway_pb2.GenerateResponse:
        async def run(ctx: RequestContext) -> gateway_pb2.GenerateResponse:
            options = convert.chat_options_from_pb(request.options)
            return convert.generate_result_to_pb(await self.gateway.generate(ctx, request.prompt, options))

        return await unary(self.front, "Generate", context, run, model=request.options.model)

    async def GenerateStream(
        self, request: gateway_pb2.GenerateRequest, context: Context
    ) -> AsyncIterator[types_pb2.ChatEvent]:
        async def events(ctx: RequestContext) -> AsyncIterator[types_pb2.ChatEvent]:
            options = convert.chat_options_from_pb(request.options)
            async for event in self.gateway.generate_stream(ctx, request.prompt, options):
                yield convert.chat_event_to_pb(event)

        async for message in stream(self.front, "GenerateStream", context, events, model=request.options.model):
            yield message

    async def Nli(self, request: gateway_pb2.NliRequest, context: Context) -> gateway_pb2.NliResponse:
        pairs, model, truncate = convert.nli_request_from_pb(request)

        async def run(ctx: RequestContext) -> gateway_pb2.NliResponse:
            return convert.nli_result_to_pb(await self.gateway.nli(ctx, pairs, model=model, truncate=truncate))

        return await unary(self.front, "Nli", context, run, model=model or self.gateway.default_model("nli"))

    async def Classify(self, request: gateway_pb2.ClassifyRequest, context: Context) -> gateway_pb2.ClassifyResponse:
        async def run(ctx: RequestContext) -> gateway_pb2.ClassifyResponse:
            result = await self.gateway.classify(
                ctx,
                request.text,
                list(request.candidate_labels),
                model=request.model,
                multi_label=request.multi_label,
                hypothesis_template=request.hypothesis_template,
            )
            return convert.classify_result_to_pb(result)

        model = request.model or self.gateway.default_model("classify")
        return await unary(self.front, "Classify", context, run, model=model)

    async def CountTokens(
        self, request: gateway_pb2.CountTokensRequest, context: Context
    ) -> gateway_pb2.CountTokensResponse:
        async def run(ctx: RequestContext) -> gateway_pb2.CountTokensResponse:
            if request.messages:
                messages = [convert.message_from_pb(m) for m in request.messages]
                result = await self.gateway.count_message_tokens(ctx, messages, model=request.model)
            else:
                result = await self.gateway.count_tokens(ctx, list(request.texts), model=request.model)
            return convert.count_tokens_result_to_pb(result)

        return await unary(self.front, "CountTokens", context, run, model=request.model)

    async def Tokenize(self, request: gateway_pb2.TokenizeRequest, context: Context) -> gateway_pb2.TokenizeResponse:
        async def run(ctx: RequestContext) -> gateway_pb2.TokenizeResponse:
            result = await self.gateway.tokenize(
                ctx, request.text, model=request.model, add_special_tokens=request.add_special_tokens
            )
            return convert.tokenize_result_to_pb(result)

        return await unary(self.front, "Tokenize", context, run, model=request.model)

    async def ListModels(
        self, request: gateway_pb2.ListModelsRequest, context: Context
    ) -> gateway_pb2.ListModelsResponse:
        async def run(ctx: RequestContext) -> gateway_pb2.ListModelsResponse:
            task = convert.task_from_pb(request.task)
            models = await self.gateway.list_models(task=task, local_only=request.local_only, tier=ctx.privacy_tier)
            return gateway_pb2.ListModelsResponse(
                models=[convert.model_metadata_to_pb(m) for m in models],
                timing=convert.timing_to_pb(Timing(total_ms=ctx.elapsed_ms())),
            )

        return await unary(self.front, "ListModels", context, run, limited=False)

    async def GetModelMetadata(
        self, request: gateway_pb2.GetModelMetadataRequest, context: Context
    ) -> types_pb2.ModelMetadata:
        async def run(ctx: RequestContext) -> types_pb2.ModelMetadata:
            return convert.model_metadata_to_pb(await self.gateway.model_metadata(request.model))

        return await unary(self.front, "GetModelMetadata", context, run, model=request.model, limited=False)

    async def RenderChatTemplate(
        self, request: gateway_pb2.RenderChatTemplateRequest, context: Context
    ) -> gateway_pb2.RenderChatTemplateResponse:
        async def run(ctx: RequestContext) -> gateway_pb2.RenderChatTemplateResponse:
            messages = [convert.message_from_pb(m) for m in request.messages]
            rendered = await self.gateway.render_chat_template(
                ctx, messages, model=request.model, add_generation_prompt=request.add_generation_prompt
            )
            return convert.rendered_prompt_to_pb(rendered)

        return await unary(self.front, "RenderChatTemplate", context, run, model=request.model)


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, gateway: Gateway, daemon: DaemonControl, front: Front) -> None:
        self.gateway = gateway
        self.daemon = daemon
        self.front = front

    async def Status(self, request: admin_pb2.StatusRequest, context: Context) -> admin_pb2.StatusResponse:
        async def run(ctx: RequestContext) -> admin_pb2.StatusResponse:
            return convert.status_to_pb(self.daemon.status())

        return await unary(self.front, "Status", context, run, limited=False)

    async def Reload(self, request: admin_pb2.ReloadRequest, context: Context) -> admin_pb2.ReloadResponse:
        async def run(ctx: RequestContext) -> admin_pb2.ReloadResponse:
            return convert.reload_to_pb(await self.daemon.reload())

        return await unary(self.front, "Reload", context, run, limited=False)

    async def LoadModel(self, request: admin_pb2.LoadModelRequest, context: Context) -> admin_pb2.LoadedModel:
        async def run(ctx: RequestContext) -> admin_pb2.LoadedModel:
            return convert.loaded_model_to_pb(await self.gateway.admin.load_model(request.model))

        return await unary(self.front, "LoadModel", context, run, model=request.model)

    async def UnloadModel(
        self, request: admin_pb2.UnloadModelRequest, context: Context
    ) -> admin_pb2.UnloadModelResponse:
        async def run(ctx: RequestContext) -> admin_pb2.UnloadModelResponse:
            unloaded = await self.gateway.admin.unload_model(request.model)
            message = "unloaded" if unloaded else "the model was not loaded"
            return admin_pb2.UnloadModelResponse(unloaded=unloaded, message=message)

        return await unary(self.front, "UnloadModel", context, run, model=request.model, limited=False)

    async def SwapModel(self, request: admin_pb2.SwapModelRequest, context: Context) -> admin_pb2.SwapModelResponse:
        async def run(ctx: RequestContext) -> admin_pb2.SwapModelResponse:
            return convert.swap_to_pb(await self.gateway.admin.swap_model(request.model))

        return await unary(self.front, "SwapModel", context, run, model=request.model, limited=False)

    async def ListLoadedModels(
        self, request: admin_pb2.ListLoadedModelsRequest, context: Context
    ) -> admin_pb2.ListLoadedModelsResponse:
        async def run(ctx: RequestContext) -> admin_pb2.ListLoadedModelsResponse:
            models = self.gateway.admin.loaded_models()
            # The budget counts file footprints (see local/pool.py), so "used" does too.
            return admin_pb2.ListLoadedModelsResponse(
                models=[convert.loaded_model_to_pb(m) for m in models],
                memory_budget_mb=self.gateway.settings.local.memory_budget_mb,
                memory_used_mb=self.gateway.pool.used_mb(),
            )

        return await unary(self.front, "ListLoadedModels", context, run, limited=False)

    async def GetBudget(self, request: admin_pb2.GetBudgetRequest, context: Context) -> admin_pb2.GetBudgetResponse:
        async def run(ctx: RequestContext) -> admin_pb2.GetBudgetResponse:
            budgets = await self.gateway.budget(request.scope)
            return admin_pb2.GetBudgetResponse(scopes=[convert.budget_status_to_pb(b) for b in budgets])

        return await unary(self.front, "GetBudget", context, run, limited=False)
