"""Ratatoskr's thin client: domain types, typed errors, the gRPC transport and ``auto()``."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = [
    "AsyncServiceClient",
    "BlockingGateway",
    "Cancelled",
    "ClassifyResult",
    "CountTokensResult",
    "DeadlineExceeded",
    "EmbedResult",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "LabelScore",
    "LoadedModel",
    "ModelGateway",
    "NliPrediction",
    "NliResult",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "RatatoskrError",
    "ReloadResult",
    "ResourceExhausted",
    "ServerStatus",
    "ServiceClient",
    "SwapResult",
    "SyncModelGateway",
    "Task",
    "Timing",
    "Token",
    "TokenizeResult",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Usage",
    "auto",
    "auto_async",
    "default_socket_path",
]

if TYPE_CHECKING:
    from ratatoskr_client.auto import auto, auto_async
    from ratatoskr_client.blocking import BlockingGateway
    from ratatoskr_client.client import AsyncServiceClient, ServiceClient
    from ratatoskr_client.errors import (
        Cancelled,
        DeadlineExceeded,
        FailedPrecondition,
        Internal,
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
    from ratatoskr_client.paths import default_socket_path
    from ratatoskr_client.protocol import ModelGateway, SyncModelGateway
    from ratatoskr_client.types import (
        ClassifyResult,
        CountTokensResult,
        EmbedResult,
        LabelScore,
        LoadedModel,
        NliPrediction,
        NliResult,
        ReloadResult,
        ServerStatus,
        SwapResult,
        Task,
        Timing,
        Token,
        TokenizeResult,
        Usage,
    )

#: Every name is imported on first use: the client modules load grpc and the stubs (about a quarter
#: of a second) and the types build some fifty dataclasses, so ``import ratatoskr_client.errors`` (the
#: daemon, the CLI's offline commands) pays for neither.
_LAZY = {
    **dict.fromkeys(
        (
            "Cancelled",
            "DeadlineExceeded",
            "FailedPrecondition",
            "Internal",
            "InvalidArgument",
            "NotFound",
            "OutOfRange",
            "PermissionDenied",
            "RatatoskrError",
            "ResourceExhausted",
            "Unauthenticated",
            "Unavailable",
            "Unimplemented",
        ),
        "ratatoskr_client.errors",
    ),
    **dict.fromkeys(
        (
            "ClassifyResult",
            "CountTokensResult",
            "EmbedResult",
            "LabelScore",
            "LoadedModel",
            "NliPrediction",
            "NliResult",
            "ReloadResult",
            "ServerStatus",
            "SwapResult",
            "Task",
            "Timing",
            "Token",
            "TokenizeResult",
            "Usage",
        ),
        "ratatoskr_client.types",
    ),
    "default_socket_path": "ratatoskr_client.paths",
    "ModelGateway": "ratatoskr_client.protocol",
    "SyncModelGateway": "ratatoskr_client.protocol",
    "auto": "ratatoskr_client.auto",
    "auto_async": "ratatoskr_client.auto",
    "BlockingGateway": "ratatoskr_client.blocking",
    "AsyncServiceClient": "ratatoskr_client.client",
    "ServiceClient": "ratatoskr_client.client",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
