"""The error taxonomy, and the one table between it and gRPC status codes.

The daemon raises these inside the core and the RPC edge turns them into a
status; the client turns a status back into the same class.  Both sides read
``code`` so the mapping lives in exactly one place.
"""

from __future__ import annotations

from typing import ClassVar


class RatatoskrError(Exception):
    """Base of every error the gateway reports. ``code`` is a grpc.StatusCode name."""

    code: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return self.message


class InvalidArgument(RatatoskrError):
    code = "INVALID_ARGUMENT"


class NotFound(RatatoskrError):
    code = "NOT_FOUND"


class AlreadyExists(RatatoskrError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(RatatoskrError):
    code = "FAILED_PRECONDITION"


class OutOfRange(RatatoskrError):
    code = "OUT_OF_RANGE"


class ResourceExhausted(RatatoskrError):
    code = "RESOURCE_EXHAUSTED"


class PermissionDenied(RatatoskrError):
    code = "PERMISSION_DENIED"


class Unauthenticated(RatatoskrError):
    code = "UNAUTHENTICATED"


class Unavailable(RatatoskrError):
    code = "UNAVAILABLE"


class DeadlineExceeded(RatatoskrError):
    code = "DEADLINE_EXCEEDED"


class Cancelled(RatatoskrError):
    code = "CANCELLED"


class Unimplemented(RatatoskrError):
    code = "UNIMPLEMENTED"


class Internal(RatatoskrError):
    code = "INTERNAL"


ERROR_BY_CODE: dict[str, type[RatatoskrError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        OutOfRange,
        ResourceExhausted,
        PermissionDenied,
        Unauthenticated,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Unimplemented,
        Internal,
    )
}


def error_for_code(code: str, message: str, *, retry_after_s: float | None = None) -> RatatoskrError:
    """The typed exception for a status code name; unknown codes fall back to the base class."""
    cls = ERROR_BY_CODE.get(code, RatatoskrError)
    return cls(message, retry_after_s=retry_after_s)
