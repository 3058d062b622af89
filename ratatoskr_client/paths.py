"""Where the daemon's socket lives by default, known to both the daemon and its clients."""

from __future__ import annotations

import os
import stat
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
        path = default_socket_path()
        # The default is this user's own directory; one that is not could be a trap set in /tmp.
        reason = None if os.environ.get(SOCKET_ENV) else unsafe_socket_directory(path.parent)
        if reason is not None:
            from ratatoskr_client.errors import FailedPrecondition

            raise FailedPrecondition(f"refusing the default socket {path}: {reason}; remove that directory")
        return f"unix:{path}"
    text = os.fspath(address)
    if text.startswith(("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:")):
        return text
    if "/" in text or text.endswith(".sock"):
        return f"unix:{text}"
    return text


def unsafe_socket_directory(directory: Path) -> str | None:
    """Why a socket directory is not safe to use, or None when it is.

    Whoever can write to the directory can replace the socket with their own and read what clients
    send (the /tmp fallback is a guessable name another local user may create first).  So the
    directory must belong to this user and be writable by nobody else; group read and search
    (a shared ``socket_group``) are fine.
    """
    try:
        info = directory.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(info.st_mode):
        return f"{directory} is not a directory"
    if info.st_uid != os.geteuid():
        return f"{directory} belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()})"
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        return f"{directory} has mode {mode:04o}: others can write to it (it must not be group- or world-writable)"
    return None
