"""systemd's service notification protocol (sd_notify): readiness, reloads, stopping, the watchdog.

A service of ``Type=notify`` tells systemd its state in datagrams of ``KEY=VALUE`` lines sent
to the Unix socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` names an abstract socket).
The protocol is one ``sendto`` per message, so it is written here rather than linked from
libsystemd.  Without ``$NOTIFY_SOCKET`` (a terminal, Docker, launchd) every method does nothing.

Sending never blocks and never fails the daemon: a notification systemd cannot take is
dropped with one warning, since serving matters more than reporting.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: what systemd compares ``MONOTONIC_USEC`` with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    def __init__(
        self, address: str | None, watchdog_s: float | None = None, clock: Callable[[], int] = monotonic_usec
    ) -> None:
        #: The socket address as ``sendto`` takes it (abstract names start with a NUL byte).
        self.address = None if not address else "\0" + address[1:] if address.startswith("@") else address
        #: WatchdogSec= as systemd passed it; None when the watchdog is off (or meant for another process).
        self.watchdog_s = watchdog_s
        self._clock = clock
        self._socket: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """The notifier systemd set up for this process, from ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC``.

        ``WATCHDOG_PID`` names the process the watchdog is for; another process's is ignored.
        """
        env = os.environ if env is None else env
        pid = os.getpid() if pid is None else pid
        watchdog_s = None
        usec = env.get("WATCHDOG_USEC", "")
        owner = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not owner or owner == str(pid)):
            watchdog_s = int(usec) / 1e6
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_s)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> None:
        """One datagram of ``KEY=VALUE`` lines; dropped (with one warning) when systemd cannot take it."""
        if self.address is None:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)  # a full queue must not stall the event loop
            self._socket.sendto("\n".join(lines).encode(), self.address)
        except OSError as err:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd", extra={"reason": err.strerror or str(err)})

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *_status(status))

    def reloading(self) -> None:
        """Before re-reading the configuration; systemd waits for the next READY=1."""
        self.send("RELOADING=1", f"MONOTONIC_USEC={self._clock()}")

    def stopping(self, status: str = "") -> None:
        self.send("STOPPING=1", *_status(status))

    def status(self, status: str) -> None:
        self.send(*_status(status))

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _status(text: str) -> list[str]:
    """A STATUS= line (shown by ``systemctl status``): one line, since the protocol is line based."""
    first = text.splitlines()[0] if text else ""
    return [f"STATUS={first[:200]}"] if first else []
