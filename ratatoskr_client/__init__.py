"""Ratatoskr's thin client: domain types, typed errors, the gRPC transport and ``auto()``."""

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
from ratatoskr_client.types import EmbedResult, LoadedModel, ReloadResult, ServerStatus, Task, Timing, Usage

__all__ = [
    "AsyncServiceClient",
    "BlockingGateway",
    "Cancelled",
    "DeadlineExceeded",
    "EmbedResult",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "LoadedModel",
    "ModelGateway",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "RatatoskrError",
    "ReloadResult",
    "ResourceExhausted",
    "ServerStatus",
    "ServiceClient",
    "SyncModelGateway",
    "Task",
    "Timing",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Usage",
    "auto",
    "auto_async",
    "default_socket_path",
]
