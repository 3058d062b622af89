"""One table from upstream failures to domain errors (and so to gRPC status codes).

Every message names the provider and carries the upstream's own words with
any secret scrubbed out: some APIs echo part of a rejected key.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from ratatoskr_client.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    RatatoskrError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from ratatoskr_server.redact import display_url, scrub

_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "context length",
    "maximum context",
    "prompt is too long",
    "too many tokens",
    "exceeds the context window",
    "input is too long",
)
_FILTER_MARKERS = ("content_filter", "content_policy", "content policy", "safety system", "flagged")


def upstream_message(body: str) -> tuple[str, str]:
    """(message, code-or-type) from the error bodies of OpenAI, Anthropic, Ollama and HF alike."""
    try:
        data: Any = json.loads(body)
    except (json.JSONDecodeError, ValueError):
        return body.strip()[:500], ""
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, str):
            return err, str(data.get("error_type", ""))
        if isinstance(err, dict):
            code = err.get("code") or err.get("type") or ""
            return str(err.get("message") or err), str(code)
    return str(data)[:500], ""


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from retry-after-ms or retry-after (seconds); HTTP dates are ignored."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(float(value) * scale, 0.0)
            except ValueError:
                continue
    return None


def error_from_status(
    provider: str, status: int, body: str, headers: Mapping[str, str], secrets: Iterable[str] = ()
) -> RatatoskrError:
    message, code = upstream_message(body)
    text = scrub(f"{provider}: {message or f'HTTP {status}'}", secrets)
    lowered = f"{message} {code}".lower()
    # Only a refusal of the request itself can be about its length or content: a 429 or 5xx whose
    # text mentions either keeps its own, retryable, status.
    if status in (400, 413, 422):
        if any(m in lowered for m in _CONTEXT_MARKERS):
            return OutOfRange(text)
        if any(m in lowered for m in _FILTER_MARKERS):
            return PermissionDenied(text)
    if status == 429:
        return ResourceExhausted(text, retry_after_s=retry_after(headers))
    if status == 401:
        return Unauthenticated(text)
    if status == 403:  # authenticated, but not allowed (the key lacks access to this model or region)
        return PermissionDenied(text)
    if status == 404:
        return NotFound(text)
    if status == 501:
        return Unimplemented(text)
    if status in (400, 405, 409, 413, 415, 422):
        return InvalidArgument(text)
    return Unavailable(text, retry_after_s=retry_after(headers))


def error_from_exception(provider: str, url: str, err: Exception, secrets: Iterable[str] = ()) -> RatatoskrError:
    """Transport failures: nothing answered, or it stopped answering."""
    url = display_url(url)
    if isinstance(err, httpx.ConnectError):
        return Unavailable(scrub(f"{provider}: cannot connect to {url} ({err})", secrets))
    if isinstance(err, httpx.TimeoutException):
        return Unavailable(scrub(f"{provider}: {url} did not answer in time ({type(err).__name__})", secrets))
    return Unavailable(scrub(f"{provider}: the connection to {url} failed: {err}", secrets))


def error_in_stream(provider: str, message: str, code: str = "", secrets: Iterable[str] = ()) -> RatatoskrError:
    """An error the upstream reported inside a stream it had already started (HTTP 200)."""
    lowered = f"{message} {code}".lower()
    text = scrub(f"{provider}: {message}", secrets)
    if "overloaded" in lowered or "unavailable" in lowered:
        return Unavailable(text)
    if "rate_limit" in lowered or "rate limit" in lowered:
        return ResourceExhausted(text)
    if any(m in lowered for m in _CONTEXT_MARKERS):
        return OutOfRange(text)
    if any(m in lowered for m in _FILTER_MARKERS):
        return PermissionDenied(text)
    if "invalid_request" in lowered:
        return InvalidArgument(text)
    return Unavailable(text)


#: What may go better on another try: nothing answered, it answered too slowly, it was overloaded
#: (5xx, 529, an overload inside a stream) or it asked us to slow down (429).  Auth, bad requests,
#: unknown models, too-long inputs and content filters fail the same way every time.
TRANSIENT: tuple[type[RatatoskrError], ...] = (Unavailable, ResourceExhausted, DeadlineExceeded)


def transient(err: BaseException) -> bool:
    """Whether ``err`` (as a provider raised it) is worth another try: the one place that decides."""
    return isinstance(err, TRANSIENT)


#: Answers larger than this are parsed off the event loop (a 2048 x 1536 embedding answer is ~30 MB).
_PARSE_INLINE_MAX = 256 * 1024


async def json_object(provider: str, response: httpx.Response, secrets: Iterable[str] = ()) -> dict[str, Any]:
    """A 200 answer's JSON object, or UNAVAILABLE naming the provider when it is not one.

    Proxies and captive portals answer 200 with HTML; that is a broken upstream, not our bug.
    """
    content = response.content
    try:
        data: Any = (
            json.loads(content) if len(content) <= _PARSE_INLINE_MAX else await asyncio.to_thread(json.loads, content)
        )
    except ValueError:
        kind = response.headers.get("content-type", "no content type")
        sample = content[:120].decode("utf-8", "replace")
        message = f"{provider}: answered 200 with a body that is not JSON ({kind}): {sample!r}"
        raise Unavailable(scrub(message, secrets)) from None
    if not isinstance(data, dict):
        raise Unavailable(f"{provider}: answered 200 with JSON that is not an object ({type(data).__name__})")
    return data
