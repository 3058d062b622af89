"""The one table from a domain error's kind to HTTP: status, and OpenAI's error ``type`` and ``code``.

The twin of ``fronts/grpc/status.py``: the core raises ``RatatoskrError`` with a ``code`` (a gRPC
status name); this is the only place the HTTP front turns one into a response.  Statuses follow
what OpenAI's API (and so its SDKs' exception classes) use: 400 BadRequestError, 401
AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError, 422 UnprocessableEntityError,
429 RateLimitError (with ``retry-after``, which the SDKs honour), 5xx InternalServerError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ratatoskr_client.errors import RatatoskrError
from ratatoskr_server.edge import MAX_MESSAGE_CHARS, clip


@dataclass(frozen=True, slots=True)
class HttpError:
    """How one error kind looks on the wire."""

    status: int
    type: str
    code: str


#: Error kind → HTTP.  A context window overflow (OUT_OF_RANGE) is a 400 with OpenAI's
#: ``context_length_exceeded`` code, as OpenAI reports it; a model that cannot do what was asked
#: (FAILED_PRECONDITION: no such capability, a parameter refused under the strict policy) is 422.
HTTP_BY_CODE: dict[str, HttpError] = {
    "INVALID_ARGUMENT": HttpError(400, "invalid_request_error", "invalid_request"),
    "OUT_OF_RANGE": HttpError(400, "invalid_request_error", "context_length_exceeded"),
    "UNAUTHENTICATED": HttpError(401, "authentication_error", "invalid_api_key"),
    "PERMISSION_DENIED": HttpError(403, "permission_error", "permission_denied"),
    "NOT_FOUND": HttpError(404, "invalid_request_error", "model_not_found"),
    "DEADLINE_EXCEEDED": HttpError(408, "timeout_error", "timeout"),
    "ALREADY_EXISTS": HttpError(409, "invalid_request_error", "conflict"),
    "FAILED_PRECONDITION": HttpError(422, "invalid_request_error", "unsupported"),
    "RESOURCE_EXHAUSTED": HttpError(429, "rate_limit_error", "rate_limit_exceeded"),
    "CANCELLED": HttpError(499, "invalid_request_error", "cancelled"),
    "INTERNAL": HttpError(500, "server_error", "internal_error"),
    "UNKNOWN": HttpError(500, "server_error", "internal_error"),
    "UNIMPLEMENTED": HttpError(501, "server_error", "not_implemented"),
    "UNAVAILABLE": HttpError(503, "server_error", "service_unavailable"),
}
_FALLBACK = HTTP_BY_CODE["INTERNAL"]
#: Not a domain error: the body was larger than ``http_front.max_body_mb``.
TOO_LARGE = HttpError(413, "invalid_request_error", "request_too_large")


def http_error(err: RatatoskrError) -> HttpError:
    return HTTP_BY_CODE.get(err.code, _FALLBACK)


def error_body(message: str, kind: HttpError, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON: ``{"error": {"message", "type", "param", "code"}}``."""
    return {
        "error": {"message": clip(message, MAX_MESSAGE_CHARS), "type": kind.type, "param": param, "code": kind.code}
    }


def error_json(err: RatatoskrError) -> dict[str, Any]:
    return error_body(err.message, http_error(err))


def retry_after(err: RatatoskrError) -> str | None:
    """The ``retry-after`` header (whole seconds, rounded up, as HTTP wants them), when the error has one."""
    if err.retry_after_s is None:
        return None
    return str(max(1, -int(-err.retry_after_s // 1)))
