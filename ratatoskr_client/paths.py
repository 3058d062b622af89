"""Where the daemon's socket lives by default, known to both the daemon and its clients."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

SOCKET_ENV = "RATATOSKR_SERVER__SOCKET_PATH"
DEFAULT_TCP_PORT = 9741


def default_socket_path() -> Path:
    """$XDG_RUNTIME_DIR/ratatoskr/ratatoskr.sock, else a per-user directory under /tmp.

    The same environment variable that moves the daemon's socket moves the
    client's default, so one export configures both.
    """
    override = os.environ.get(SOCKET_ENV)
    if override:
        return Path(override).expanduser()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "ratatoskr" / "ratatoskr.sock"
    return Path(tempfile.gettempdir()) / f"ratatoskr-{os.getuid()}" / "ratatoskr.sock"


def grpc_target(address: str | os.PathLike[str] | None) -> str:
    """A gRPC target from a socket path, ``unix:`` URI or ``host:port``; None means the default socket."""
    if address is None:
        return f"unix:{default_socket_path()}"
    text = os.fspath(address)
    if text.startswith(("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:")):
        return text
    if "/" in text or text.endswith(".sock"):
        return f"unix:{text}"
    return text
