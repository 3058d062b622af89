"""The routes of the OpenAI-compatible front, each one call through the edge and the gateway.

Every route does what ``fronts/grpc/status.py`` does for an RPC: make the ``RequestContext`` (request
id, privacy ask), enter ``Edge.admit``/``Edge.stream`` under the name of the gRPC method it stands
for (one scope table, one metric and log vocabulary), authorize through the shared ``Guard``, call
the gateway, settle tokens for tpm, and turn a ``RatatoskrError`` into OpenAI's error JSON
(``errors.py``).  A stream's status and headers are sent with its first event, so anything that
fails before it (auth, routing, the upstream's refusal) still gets its real status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar

from aiohttp import web

from ratatoskr_client.client import PRIVACY_TIER_KEY, REQUEST_ID_KEY, RETRY_AFTER_KEY
from ratatoskr_client.errors import Internal, InvalidArgument, RatatoskrError
from ratatoskr_client.types import ChatEvent, ChatOptions, Done, GenerateResult, Usage, UsageEvent
from ratatoskr_server.context import RequestContext
from ratatoskr_server.fronts.grpc.status import Front, privacy_tier, trailing_metadata
from ratatoskr_server.fronts.guard import AUTHORIZATION_KEY, Guard
from ratatoskr_server.fronts.openai_http import errors, sse, wire
from ratatoskr_server.gateway import Gateway
from ratatoskr_server.telemetry.tracing import trace_carrier

T = TypeVar("T")
Json = dict[str, Any]
GATEWAY_KEY = web.AppKey("gateway", Gateway)
FRONT_KEY = web.AppKey("front", Front)


#: This front's name in metrics labels and in the guard's wording.
TRANSPORT = "http"

#: The caller's deadline in seconds (HTTP has no standard one; gRPC's is the call's own).
TIMEOUT_KEY = "x-ratatoskr-timeout"


def _timeout(request: web.Request) -> float | None:
    value = request.headers.get(TIMEOUT_KEY)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise InvalidArgument(f"{TIMEOUT_KEY}: expected a positive number of seconds, not {value[:40]!r}")
    return seconds


def request_context(request: web.Request) -> RequestContext:
    """The caller's x-request-id when sane, its deadline (``x-ratatoskr-timeout``, seconds) and its
    privacy ask (which can only tighten the tier)."""
    ctx = RequestContext.start(timeout=_timeout(request), request_id=request.headers.get(REQUEST_ID_KEY))
    ctx.trace_carrier = trace_carrier(request.headers)
    for ask in request.headers.getall(PRIVACY_TIER_KEY, ()):
        ctx.tighten_privacy(privacy_tier(ask))
    return ctx


def _peer(request: web.Request) -> str:
    """The peer as the guard reads it: anything not "unix:…" is TCP."""
    return f"tcp:{request.remote or ''}"


def _metadata(request: web.Request, guard: Guard) -> list[tuple[str, str]]:
    """The headers as the guard reads metadata.

    OpenAI's SDKs and most tools refuse to run without an API key and always send one, so where no
    caller keys are configured at all and TCP callers need none (``server.tcp_require_auth = false``),
    the placeholder key is left out rather than refused: it could name no caller, and it grants
    nothing an anonymous call does not.  Once any key is configured, a sent key is always checked.
    """
    anonymous_ok = not len(guard.keys) and not guard.tcp_require_auth
    return [(k.lower(), v) for k, v in request.headers.items() if not (anonymous_ok and k.lower() == AUTHORIZATION_KEY)]


def note_headers(ctx: RequestContext, err: RatatoskrError | None = None) -> dict[str, str]:
    """Our notes as ``x-ratatoskr-*`` headers: the very pairs gRPC sends as trailing metadata (one
    list of notes for both fronts, ASCII-escaped there already), with HTTP's whole-second retry-after."""
    headers = dict(trailing_metadata(ctx))
    if err is not None and (after := errors.retry_after(err)) is not None:
        headers[RETRY_AFTER_KEY] = after
    return headers


def error_response(ctx: RequestContext | None, err: RatatoskrError) -> web.Response:
    headers = note_headers(ctx, err) if ctx is not None else {}
    return web.json_response(errors.error_json(err), status=errors.http_error(err).status, headers=headers)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"the request body is not valid JSON: {err}") from None
    return dict(wire.require_object(body))


async def unary(
    request: web.Request,
    ctx: RequestContext,
    rpc: str,
    handler: Callable[[RequestContext], Awaitable[T]],
    *,
    model: str = "",
    limited: bool = True,
    usage: Callable[[T], Usage] | None = None,
) -> T:
    """One call through the edge: its answer, or the domain error it ended with."""
    front = request.app[FRONT_KEY]
    guard = front.guard  # one guard for the whole call, should a reload replace it meanwhile
    async with front.edge.admit(rpc, ctx, model=model, limited=limited, transport=TRANSPORT):
        caller = await guard.admit(rpc, _peer(request), _metadata(request, guard), ctx, TRANSPORT)
        result = await handler(ctx)
        if usage is not None:
            await guard.settle_tokens(caller, _tokens(usage(result)))
    return result


Route = Callable[[web.Request, RequestContext], Awaitable[web.StreamResponse]]


def route(handler: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler given its request's context, whose domain errors become OpenAI error responses."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            ctx = request_context(request)
        except RatatoskrError as err:  # an unknown privacy tier or a bad timeout: refused, never ignored
            return error_response(None, err)
        try:
            return await handler(request, ctx)
        except RatatoskrError as err:
            return error_response(ctx, err)

    return handle


def _tokens(usage: Usage) -> int:
    return usage.total_tokens or usage.prompt_tokens + usage.completion_tokens


@web.middleware
async def openai_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own refusals (404, 405, 413) as OpenAI's error JSON too."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as err:
        body = errors.error_body(
            f"the request body is larger than http_front.max_body_mb ({err.text})", errors.TOO_LARGE
        )
        return web.json_response(body, status=413)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        kind = errors.HttpError(
            err.status, "invalid_request_error", "not_found" if err.status == 404 else "invalid_request"
        )
        return web.json_response(
            errors.error_body(f"{request.method} {request.path}: {err.reason}", kind), status=err.status
        )


# -- chat and completions -----------------------------------------------------------------------


async def chat_completions(request: web.Request, ctx: RequestContext) -> web.StreamResponse:
    gateway = request.app[GATEWAY_KEY]
    body = await _body(request)
    messages = wire.messages_from_json(body.get("messages"))
    options = wire.options_from_json(body)
    stream, include_usage = wire.stream_flags(body)
    if stream:
        chunks = wire.ChatChunks(ctx.request_id, options.model, include_usage)
        return await _stream(
            request, ctx, "ChatStream", lambda ctx: gateway.chat_stream(ctx, messages, options), chunks, options.model
        )
    result = await unary(
        request,
        ctx,
        "Chat",
        lambda ctx: gateway.chat(ctx, messages, options),
        model=options.model,
        usage=lambda r: r.usage,
    )
    return web.json_response(wire.chat_completion(result, ctx.request_id, options.model), headers=note_headers(ctx))


#: Prompts of one ``/v1/completions`` batch sent upstream at once; the rest wait their turn.
BATCH_CONCURRENCY = 8


async def completions(request: web.Request, ctx: RequestContext) -> web.StreamResponse:
    gateway = request.app[GATEWAY_KEY]
    body = await _body(request)
    prompts = wire.prompts_from_json(body, gateway.settings.limits.max_inputs_per_request)
    options = wire.options_from_json(body)
    stream, include_usage = wire.stream_flags(body)
    if stream:
        chunks = wire.TextChunks(ctx.request_id, options.model, include_usage, prompts=len(prompts))
        return await _stream(
            request,
            ctx,
            "GenerateStream",
            lambda ctx: _generate_streams(gateway, ctx, prompts, options),
            chunks,
            options.model,
        )

    async def generate_all(ctx: RequestContext) -> list[GenerateResult]:
        """Every prompt answered, in order; the first failure fails the request and stops the rest."""
        gate = asyncio.Semaphore(BATCH_CONCURRENCY)

        async def one(prompt: str) -> GenerateResult:
            async with gate:
                return await gateway.generate(ctx, prompt, options)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(prompt)) for prompt in prompts]
        except BaseExceptionGroup as failed:  # the first failure speaks for the batch, as its own kind
            raise failed.exceptions[0] from None
        return [task.result() for task in tasks]

    results = await unary(
        request,
        ctx,
        "Generate",
        generate_all,
        model=options.model,
        usage=lambda rs: wire.sum_usage(r.usage for r in rs),
    )
    return web.json_response(
        wire.text_completion(results, ctx.request_id, options.model, ctx.notes), headers=note_headers(ctx)
    )


async def _generate_streams(
    gateway: Gateway, ctx: RequestContext, prompts: list[str], options: ChatOptions
) -> AsyncIterator[ChatEvent]:
    """The prompts' streams one after another (``TextChunks`` numbers the choices by their ``Done``)."""
    for prompt in prompts:
        done = False
        async with aclosing(gateway.generate_stream(ctx, prompt, options)) as events:  # type: ignore[type-var]
            async for event in events:
                done = isinstance(event, Done)
                yield event
        if not done:
            raise Internal(f"a prompt's stream ended before its end (request id {ctx.request_id})")


async def _stream(
    request: web.Request,
    ctx: RequestContext,
    rpc: str,
    events: Callable[[RequestContext], AsyncIterator[ChatEvent]],
    chunks: wire.ChatChunks | wire.TextChunks,
    model: str,
) -> web.StreamResponse:
    """One streamed answer: the status and headers go with the first event; a failure after that is
    an in-band error event and the body ends without ``[DONE]``. Notes that became known or changed
    since the headers (the gateway's overhead, always) go just before the end as SSE comments."""
    front = request.app[FRONT_KEY]
    guard = front.guard

    async def guarded() -> AsyncIterator[ChatEvent]:
        caller = await guard.admit(rpc, _peer(request), _metadata(request, guard), ctx, TRANSPORT)
        async for event in events(ctx):
            if isinstance(event, UsageEvent):
                await guard.settle_tokens(caller, _tokens(event.usage))
            yield event

    response: web.StreamResponse | None = None
    sent: dict[str, str] = {}
    finished = False
    tail = b""
    try:
        async with aclosing(front.edge.stream(rpc, ctx, guarded(), model=model, transport=TRANSPORT)) as relayed:  # type: ignore[type-var]
            async for event in relayed:
                if response is None:
                    sent = note_headers(ctx)
                    response = web.StreamResponse(headers={**sse.STREAM_HEADERS, **sent})
                    await response.prepare(request)
                    if isinstance(chunks, wire.ChatChunks):
                        await response.write(sse.event(chunks.first()))
                for chunk in chunks.chunks(event):
                    await response.write(sse.event(chunk))
                if isinstance(event, Done):
                    tail = sse.DONE
                    finished = True
        if not finished:  # no Done: never let the client take what it got for the whole answer
            raise Internal(f"the stream ended before its end (request id {ctx.request_id})")
    except ConnectionResetError:
        # The client went away (a cancel, a closed tab): the relay is closed, which closed the upstream
        # call, and the edge logged the request as CANCELLED. Nobody is left to answer.
        assert response is not None
        return response
    except RatatoskrError as err:
        if response is None:
            return error_response(ctx, err)
        tail = sse.event(errors.error_json(err))
    assert response is not None  # a stream without one event became an error response above
    late = {name: value for name, value in note_headers(ctx).items() if sent.get(name) != value}
    with contextlib.suppress(ConnectionResetError):  # a client that left once it had the last event
        await response.write(sse.late_notes(late) + tail)
        await response.write_eof()
    return response


# -- embeddings and models ----------------------------------------------------------------------


async def embeddings(request: web.Request, ctx: RequestContext) -> web.StreamResponse:
    gateway = request.app[GATEWAY_KEY]
    body = await _body(request)
    inputs = wire.embed_inputs_from_json(body)
    model = body.get("model") if isinstance(body.get("model"), str) else ""
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise InvalidArgument('encoding_format: expected "float" or "base64"')
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1):
        raise InvalidArgument("dimensions: expected a positive integer")
    result = await unary(
        request,
        ctx,
        "Embed",
        lambda ctx: gateway.embed(ctx, inputs, model=str(model)),
        model=str(model) or gateway.default_model("embed"),
        usage=lambda r: r.usage,
    )
    if dimensions is not None and dimensions != result.dimension:
        # Cutting a vector short is only meaningful for models trained for it (Matryoshka); none here says so.
        raise InvalidArgument(f"dimensions: {result.model} makes {result.dimension}-dimensional vectors only")
    return web.json_response(wire.embeddings(result, str(model), str(encoding)), headers=note_headers(ctx))


async def list_models(request: web.Request, ctx: RequestContext) -> web.StreamResponse:
    gateway = request.app[GATEWAY_KEY]
    models = await unary(
        request, ctx, "ListModels", lambda ctx: gateway.list_models(tier=ctx.privacy_tier), limited=False
    )
    return web.json_response(
        {"object": "list", "data": [wire.model_json(m) for m in models]}, headers=note_headers(ctx)
    )


async def get_model(request: web.Request, ctx: RequestContext) -> web.StreamResponse:
    gateway = request.app[GATEWAY_KEY]
    name = request.match_info["model"]
    meta = await unary(
        request, ctx, "GetModelMetadata", lambda ctx: gateway.model_metadata(name), model=name, limited=False
    )
    return web.json_response(wire.model_json(meta), headers=note_headers(ctx))


def build_app(gateway: Gateway, front: Front, *, max_body_bytes: int) -> web.Application:
    app = web.Application(middlewares=[openai_errors], client_max_size=max_body_bytes)
    app[GATEWAY_KEY] = gateway
    app[FRONT_KEY] = front
    app.router.add_post("/v1/chat/completions", route(chat_completions))
    app.router.add_post("/v1/completions", route(completions))
    app.router.add_post("/v1/embeddings", route(embeddings))
    app.router.add_get("/v1/models", route(list_models))
    app.router.add_get("/v1/models/{model:.+}", route(get_model))
    return app
