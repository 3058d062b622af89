"""A real redis-server (Debian's package) for the shared-state tests, on a Unix socket in a temp dir.

A Unix socket needs no free port (``--port 0`` turns TCP off), so nothing races another test for
one.  No persistence (``--save '' --appendonly no``): a restart is an empty Redis, as after a crash
of one without a volume.  ``make test`` installs the package when ``redis-server`` is missing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import short_dir

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    def __init__(self, password: str = "") -> None:
        if REDIS_SERVER is None:
            raise AssertionError("redis-server is not installed: run `make test` (it installs it) or apt-get install")
        self.dir = short_dir()
        self.socket = self.dir / "redis.sock"
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket}"

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        args = [
            REDIS_SERVER,
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait_ping()
        return self

    def _wait_ping(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")
                raise AssertionError(f"redis-server exited with {self.proc.returncode}:\n{log}")
            if self._ping():
                return
            time.sleep(0.02)
        raise AssertionError(f"redis-server did not answer PING within {timeout}s")

    def _ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(1.0)
                conn.connect(str(self.socket))
                if self.password:
                    conn.sendall(f"AUTH {self.password}\r\n".encode())
                    conn.recv(64)
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill it (SIGKILL: a crash, not a shutdown) and wait until it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
        self.socket.unlink(missing_ok=True)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        path: Path = self.dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""
