"""The daemon process: sockets, the gRPC server, health, reflection, signals.

Lifecycle: bind (refusing a socket a live daemon answers on, replacing a
stale one), start with health NOT_SERVING, wait for the preload models (whose
loads ``startup.py`` began before this module was imported), turn SERVING,
then wait.  SIGTERM/SIGINT drain: health goes NOT_SERVING, new calls
are refused, in-flight calls get ``server.shutdown_grace_s`` to finish, exit 0.
SIGHUP (and Admin.Reload) re-reads the configuration and swaps it whole: a call
runs to its end on the configuration it started with, the next call sees the new
one, and a configuration that fails to load or check is refused whole.  Under
systemd (``Type=notify``) each step is reported through ``sdnotify``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import shlex
import shutil
import signal
import socket
import stat
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ratatoskr_client._proto.ratatoskr.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from ratatoskr_client.errors import RatatoskrError
from ratatoskr_client.paths import default_socket_path, unsafe_socket_directory
from ratatoskr_client.types import ReloadResult, ServerStatus
from ratatoskr_server import package_version
from ratatoskr_server.config import (
    ConfigError,
    ServerSettings,
    Settings,
    flatten,
)
from ratatoskr_server.edge import Edge
from ratatoskr_server.fronts.grpc.auth import Guard
from ratatoskr_server.fronts.grpc.servicers import AdminServicer, GatewayServicer
from ratatoskr_server.fronts.grpc.status import Front
from ratatoskr_server.gateway import Gateway
from ratatoskr_server.preflight import Level, check_settings
from ratatoskr_server.sdnotify import Notifier
from ratatoskr_server.startup import read_configuration
from ratatoskr_server.telemetry.logs import configure_logging
from ratatoskr_server.telemetry.metrics import Metrics
from ratatoskr_server.telemetry.tracing import Tracing

if TYPE_CHECKING:
    from ratatoskr_server.fronts.openai_http.server import HttpFront
    from ratatoskr_server.local.parts import LocalParts

log = logging.getLogger(__name__)

#: The longest path a Unix socket address holds (sun_path is 108 bytes with its NUL).
_MAX_SOCKET_PATH = 107
#: Settings read only at start; a reload reports them rather than pretending to apply them.
_RESTART_PREFIXES = (
    "server.socket_path",
    "server.socket_mode",
    "server.socket_group",
    "server.tcp_enabled",
    "server.tcp_host",
    "server.tcp_port",
    "server.reuse_port",
    "server.tls_",
    "server.max_receive_message_mb",
    "server.max_send_message_mb",
    "metrics.",
    "tracing.",
    "http_front.",
    "local.inference_workers",
    "local.load_workers",
    "local.preload",  # loaded before SERVING; a reload neither loads nor unloads them
    "registry.refresh_at_start",
    "budget.ledger",  # and budget.ledger_path: the ledger is opened once and kept across reloads
    "state.",  # the shared-state backend and its connection are made once
)
_SERVICES = (
    gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
)


class DaemonError(Exception):
    """The daemon cannot start; the message says why and what to do."""


def group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise DaemonError(f"server.socket_group: there is no group {name!r} on this host") from None


def prepare_socket_path(path: Path, group: str = "") -> None:
    """Make the socket's directory (0700 when we create it; 0710 and the group with
    ``socket_group``), refuse one others could write to, and clear a stale socket file.

    A socket file where something still accepts connections belongs to a live
    daemon: we refuse rather than steal it.  Anything that is not a socket is
    never deleted.
    """
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise DaemonError(f"socket path {path} is longer than {_MAX_SOCKET_PATH} bytes; choose a shorter one")
    if not path.parent.exists():
        # Ours, so private; an existing directory (a systemd RuntimeDirectory, a mounted
        # volume) keeps the mode its owner gave it, once checked below.
        path.parent.mkdir(parents=True)
        os.chmod(path.parent, 0o700)
        if group:
            # The group may pass through to the socket, not list or change the directory.
            os.chown(path.parent, -1, group_id(group))
            os.chmod(path.parent, 0o710)
    reason = unsafe_socket_directory(path.parent)
    if reason is not None:
        raise DaemonError(
            f"refusing the socket directory {path.parent}: {reason}; another user could replace the socket and "
            "read what clients send. Remove it (the daemon recreates it privately) or set server.socket_path"
        )
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise DaemonError(f"{path} exists and is not a socket; move it away or set server.socket_path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # stale: nobody listens
        log.info("replaced stale socket", extra={"socket": str(path)})
        return
    except OSError as err:
        raise DaemonError(f"cannot check the existing socket {path}: {err}") from None
    finally:
        probe.close()
    raise DaemonError(
        f"another ratatoskr daemon is already listening on {path}; stop it first or set server.socket_path"
    )


def tls_credentials(srv: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS for the TCP port from ``tls_cert_file``/``tls_key_file``; mutual with ``tls_client_ca_file``."""
    if srv.tls_cert_file is None or srv.tls_key_file is None:
        return None

    def read(path: Path, setting: str) -> bytes:
        try:
            return path.expanduser().read_bytes()
        except OSError as err:
            raise DaemonError(f"cannot read {setting} {path}: {err.strerror}") from None

    pair = (read(srv.tls_key_file, "server.tls_key_file"), read(srv.tls_cert_file, "server.tls_cert_file"))
    ca = read(srv.tls_client_ca_file, "server.tls_client_ca_file") if srv.tls_client_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def _bind_failure(err: OSError) -> str:
    """Why a listening socket could not be bound, in words a person can act on."""
    return {
        errno.EADDRINUSE: "the port is in use by another process",
        errno.EADDRNOTAVAIL: "that address is not one of this host's",
        errno.EACCES: "ports below 1024 need privileges",
    }.get(err.errno or 0, err.strerror or str(err))


def check_port_free(host: str, port: int, setting: str, *, shared: bool = False) -> None:
    """Fail with one line naming the setting when a TCP port cannot be bound.

    gRPC's C core would report the same failure as several lines of resolver and subchannel
    noise after the Unix socket already exists; a plain bind first says it plainly.  ``shared``
    (``server.reuse_port``) probes with SO_REUSEPORT, so a port held by sibling daemons passes while
    one held by any other process (or another user: the kernel's rule) still fails.
    """
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        reason = f"{host!r} does not resolve ({err.strerror})"
        raise DaemonError(f"cannot listen on {host}:{port}: {reason}; set {setting}") from None
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC and http.server do
            if shared:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind(address)
            except OSError as err:
                raise DaemonError(
                    f"cannot listen on {host}:{port}: {_bind_failure(err)}; change {setting} (0 picks a free port)"
                ) from None


def _cli_name() -> str:
    """The command as this person can type it: bare when it is on PATH, else the path they ran."""
    invoked = Path(sys.argv[0])
    if invoked.name != "ratatoskr":  # python -m ratatoskr_server
        return "ratatoskr"
    found = shutil.which("ratatoskr")
    if found is not None and Path(found).resolve() == invoked.resolve():
        return "ratatoskr"
    return shlex.quote(str(invoked))


def _try_next(socket_path: Path) -> str:
    """The commands a person can run next against this daemon."""
    where = "" if socket_path == default_socket_path() else f" --socket {shlex.quote(str(socket_path))}"
    cli = _cli_name()
    return f"try: {cli} embed{where} 'hello world'  |  {cli} status{where}"


class Daemon:
    def __init__(
        self,
        settings: Settings,
        config_path: Path | None = None,
        overrides: dict[str, Any] | None = None,
        *,
        config_sha256: str = "",
        notifier: Notifier | None = None,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        local: LocalParts | None = None,
    ) -> None:
        """``metrics``, ``tracing`` and ``local`` come built when the start began loading models
        before this module was imported (startup.py); otherwise they are made here."""
        self.settings = settings
        self.config_path = config_path
        #: The configuration serving new calls: 1 at start, one more per applied reload.
        self.generation = 1
        self.config_sha256 = config_sha256
        #: systemd's notification socket (nothing outside systemd).
        self.notifier = notifier or Notifier.from_environment()
        self._reloading = asyncio.Lock()
        self._ready_sent = False
        #: Command-line settings (serve --socket/--tcp/--log-format); a reload keeps them.
        self.overrides = dict(overrides or {})
        self.metrics = metrics or Metrics(enabled=settings.metrics.enabled)
        self.tracing = tracing or Tracing.from_settings(settings.tracing)
        self.edge = Edge(self.metrics, settings.server.max_in_flight, self.tracing)
        self.gateway = Gateway.from_settings(settings, self.metrics, tracing=self.tracing, local=local)
        # Rate windows live with the other shared state when state.backend = "redis" (one limit for
        # every replica); in this process otherwise.
        shared = self.gateway.shared
        self.front = Front(self.edge, Guard(settings, shared.rates if shared is not None else None))
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # stubs predate grpc.aio
        self.listen: list[str] = []
        self.state = "starting"
        self.started_at = time.monotonic()
        self._stop = asyncio.Event()
        self._socket_path: Path | None = None
        self._background: set[asyncio.Task[object]] = set()
        #: The OpenAI-compatible front, when ``http_front.enabled``; it shares ``front`` (edge and guard).
        self.http_front: HttpFront | None = None

    # -- DaemonControl -------------------------------------------------------------------------
    def status(self) -> ServerStatus:
        return ServerStatus(
            version=package_version(),
            pid=os.getpid(),
            uptime_s=round(time.monotonic() - self.started_at, 3),
            listen=list(self.listen),
            in_flight=self.edge.in_flight,
            max_in_flight=self.edge.max_in_flight,
            state=self.state,
            models=self.gateway.admin.loaded_models(),
            config_path=str(self.config_path or ""),
            breakers={key: phase.value for key, phase in self.gateway.breaker_phases().items()},
            config_generation=self.generation,
            config_sha256=self.config_sha256,
            bulkhead_in_flight={name: n for name, (n, _) in self.gateway.bulkhead_occupancy().items()},
            bulkhead_limits={name: limit for name, (_, limit) in self.gateway.bulkhead_occupancy().items()},
        )

    async def reload(self) -> ReloadResult:
        """Re-read the configuration and swap it whole, or refuse it whole; one reload at a time."""
        async with self._reloading:
            self.notifier.reloading()
            try:
                result = await self._reload()
            except BaseException:
                self._reloaded("reload failed; the running configuration is unchanged")
                raise
            if result.applied:
                self._reloaded(f"serving configuration generation {result.generation}")
            else:
                self._reloaded(f"reload refused, still serving generation {result.generation}: {result.message}")
            return result

    def _reloaded(self, status: str) -> None:
        """READY=1 ends systemd's reloading state, whether the new configuration was taken or refused;
        before the first READY=1 (still loading models) only the status line is sent."""
        if self._ready_sent:
            self.notifier.ready(status)
        else:
            self.notifier.status(status)

    def _refused(self, message: str) -> ReloadResult:
        log.error("reload refused; keeping the running configuration", extra={"reason": message})
        return ReloadResult(
            applied=False,
            changed=[],
            needs_restart=[],
            message=f"{message} (reload refused; the running configuration is unchanged)",
            generation=self.generation,
            config_sha256=self.config_sha256,
        )

    async def _reload(self) -> ReloadResult:
        path = self.config_path
        try:
            if path is not None and not (await asyncio.to_thread(path.read_text, encoding="utf-8")).strip():
                # An editor or a ConfigMap update caught mid-write: applying it would drop every setting.
                raise ConfigError(
                    f"configuration file {path} is empty (being rewritten?); send SIGHUP again once it is complete"
                )
            new, digest = await asyncio.to_thread(read_configuration, path, self.overrides)
            findings = await asyncio.to_thread(check_settings, new, path)
        except OSError as err:
            return self._refused(f"cannot read {path}: {err.strerror}")
        except ConfigError as err:
            return self._refused(str(err))
        errors = [str(f) for f in findings if f.level is Level.ERROR]
        if errors:
            return self._refused("the new configuration has errors: " + "; ".join(errors))
        try:
            # Everything that can fail is built before anything is swapped.
            guard = Guard(new, self.front.guard.rates)  # keys change live; rate windows carry on
            prepared = await self.gateway.prepare(new)
        except (ConfigError, ValueError, OSError, RatatoskrError) as err:
            return self._refused(f"the new configuration cannot be put in service: {err}")
        old_flat = dict(flatten(self.settings.masked()))
        new_flat = dict(flatten(new.masked()))
        differing = sorted(k for k in old_flat.keys() | new_flat.keys() if old_flat.get(k) != new_flat.get(k))
        needs_restart = [k for k in differing if k.startswith(_RESTART_PREFIXES)]
        changed = [k for k in differing if k not in needs_restart]
        # The swap: no await from here on, so no call sees half of it.
        self.settings = new
        configure_logging(new.logging.level, new.logging.format, new.secret_values())
        self.edge.max_in_flight = new.server.max_in_flight
        self.front.guard = guard
        awaiting = self.gateway.commit(prepared)
        self.generation += 1
        self.config_sha256 = digest
        log.info(
            "configuration reloaded",
            extra={"changed": changed, "needs_restart": needs_restart, "generation": self.generation},
        )
        # Loaded models whose files changed on disk move to them without failing a call (a swap each).
        swapped = await self.gateway.admin.swap_changed()
        # Settings loaded models follow only once loaded again (pinning and the budget apply now), in words.
        message = "; ".join(["reloaded", *awaiting, *swapped])
        return ReloadResult(
            applied=True,
            changed=changed,
            needs_restart=needs_restart,
            message=message,
            generation=self.generation,
            config_sha256=digest,
        )

    def _reload_on_signal(self) -> None:
        # The loop keeps only weak references to tasks; hold this one until it ends.
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(self.reload())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- lifecycle ------------------------------------------------------------------------------
    def _build_server(self) -> grpc.aio.Server:
        srv = self.settings.server
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", int(srv.max_receive_message_mb * 2**20)),
                ("grpc.max_send_message_length", int(srv.max_send_message_mb * 2**20)),
                ("grpc.so_reuseport", int(srv.reuse_port)),
            ]
        )
        gateway_pb2_grpc.add_GatewayServicer_to_server(GatewayServicer(self.gateway, self.front), server)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(self.gateway, self, self.front), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (*_SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        return server

    def _bind(self, server: grpc.aio.Server) -> None:
        srv = self.settings.server
        if srv.tcp_enabled:
            setting = "server.tcp_port or `serve --tcp HOST:PORT`"
            check_port_free(srv.tcp_host, srv.tcp_port, setting, shared=srv.reuse_port)
        path = srv.resolved_socket_path()
        prepare_socket_path(path, srv.socket_group)
        old_umask = os.umask(0o777 & ~srv.socket_mode_bits())
        try:
            server.add_insecure_port(f"unix:{path}")
        finally:
            os.umask(old_umask)
        self._socket_path = path
        self.listen.append(f"unix:{path}")
        if srv.tcp_enabled:
            try:
                address = f"{srv.tcp_host}:{srv.tcp_port}"
                credentials = tls_credentials(srv)
                if credentials is None:
                    port = server.add_insecure_port(address)
                else:
                    port = server.add_secure_port(address, credentials)
            except RuntimeError:
                port = 0
            if not port:  # taken between the check and the bind
                raise DaemonError(
                    f"cannot listen on {srv.tcp_host}:{srv.tcp_port}; change server.tcp_port (0 picks a free port)"
                )
            self.listen.append(f"{srv.tcp_host}:{port}")

    async def _start_http_front(self) -> None:
        settings = self.settings.http_front
        if not settings.enabled:
            return
        shared = self.settings.server.reuse_port
        check_port_free(settings.host, settings.port, "http_front.port", shared=shared)
        # aiohttp's server side loads only when the front is on (off by default; a costly import).
        from ratatoskr_server.fronts.openai_http.server import HttpFront

        grace_s = self.settings.server.shutdown_grace_s
        self.http_front = HttpFront(settings, self.gateway, self.front, grace_s, reuse_port=shared)
        try:
            self.listen.append(await self.http_front.start())
        except OSError as err:
            raise DaemonError(
                f"cannot serve the HTTP front on {settings.host}:{settings.port}: {_bind_failure(err)}; "
                "change http_front.port (0 picks a free port) or set http_front.enabled = false"
            ) from None

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for name in ("", *_SERVICES):
            await self.health.set(name, status)

    def _serve_metrics(self) -> str:
        metrics = self.settings.metrics
        if not metrics.enabled:
            return ""
        try:
            port = self.metrics.serve(metrics.host, metrics.port)
        except OSError as err:
            raise DaemonError(
                f"cannot serve metrics on {metrics.host}:{metrics.port}: {_bind_failure(err)}; "
                "change metrics.port (0 picks a free port) or set metrics.enabled = false"
            ) from None
        return f"http://{metrics.host}:{port}/metrics"

    def _remove_socket(self) -> None:
        if self._socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._socket_path.unlink()

    def _interrupt(self) -> None:
        """The first Ctrl-C drains; a second one means "now", as people expect of a terminal program."""
        if not self._stop.is_set():
            self._stop.set()
            return
        log.warning("second interrupt: exiting now without draining")
        self._remove_socket()
        logging.shutdown()
        os._exit(130)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        server = self._build_server()
        # NOT_SERVING until the preload models are ready (grpc's health servicer starts at SERVING).
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            self._bind(server)
            await server.start()
            if self._socket_path is not None:
                os.chmod(self._socket_path, self.settings.server.socket_mode_bits())
                if self.settings.server.socket_group:
                    os.chown(self._socket_path, -1, group_id(self.settings.server.socket_group))
            metrics_addr = self._serve_metrics()
            await self._start_http_front()
        except BaseException:
            await server.stop(0)
            if self.http_front is not None:
                await self.http_front.stop()
            self._remove_socket()  # a daemon that could not start leaves nothing behind
            raise
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._interrupt)
        loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)
        log.info("listening", extra={"listen": self.listen, "metrics": metrics_addr, "pid": os.getpid()})
        watchdog = loop.create_task(self._watchdog()) if self.notifier.watchdog_s else None
        self.notifier.status("loading models")

        preload = loop.create_task(self.gateway.start())
        stopper = loop.create_task(self._stop.wait())
        await asyncio.wait({preload, stopper}, return_when=asyncio.FIRST_COMPLETED)
        exit_code = 0
        if preload.done() and not stopper.done():
            try:
                preload.result()
            except RatatoskrError as err:
                log.error("preloading models failed; the daemon cannot serve", extra={"reason": err.message})
                exit_code = 1
                self._stop.set()
            except Exception as err:  # still drain and remove the socket: nothing is left half-started
                log.exception("preloading models failed; the daemon cannot serve", extra={"reason": str(err)})
                exit_code = 1
                self._stop.set()
            else:
                self.state = "serving"
                await self._set_health(health_pb2.HealthCheckResponse.SERVING)
                models = [m.name for m in self.gateway.admin.loaded_models()]
                loaded = ", ".join(models) if models else "no preloaded models"
                self.notifier.ready(f"serving ({loaded}) on {' and '.join(self.listen)}")
                self._ready_sent = True
                log.info(
                    f"ratatoskr {package_version()} serving ({loaded}) on {' and '.join(self.listen)}; "
                    f"{_try_next(self.settings.server.resolved_socket_path())}",
                    extra={"models": models, "listen": self.listen, "metrics": metrics_addr},
                )
        await stopper
        self.notifier.stopping(f"draining {self.edge.in_flight} calls in flight")
        preload.cancel()
        with contextlib.suppress(asyncio.CancelledError, RatatoskrError):
            await preload
        await self._drain(server)
        if watchdog is not None:
            watchdog.cancel()
        self.notifier.close()
        # Drained and closed; only teardown is left (the loop's own, joining worker threads, freeing
        # sessions). The loop's handlers go with the loop, after which a service manager's repeated
        # SIGTERM would kill the process as if it had failed: from here a signal ends it at once with
        # the status it already has.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, lambda *_: os._exit(exit_code))
        return exit_code

    async def _watchdog(self) -> None:
        """WATCHDOG=1 at half systemd's WatchdogSec, from the event loop itself: a loop that stops
        turning stops the pings, and systemd restarts the service."""
        assert self.notifier.watchdog_s is not None
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(self.notifier.watchdog_s / 2)

    async def _drain(self, server: grpc.aio.Server) -> None:
        self.state = "draining"
        grace = self.settings.server.shutdown_grace_s
        log.info("draining", extra={"in_flight": self.edge.in_flight, "grace_s": grace})
        await self.health.enter_graceful_shutdown()
        # Both fronts stop taking calls at once and share the grace for the ones in flight.
        stopping = [server.stop(grace)]
        if self.http_front is not None:
            stopping.append(self.http_front.stop())
        await asyncio.gather(*stopping)
        self.metrics.stop()
        await self.gateway.close()
        self._remove_socket()
        log.info("stopped")


def exit_after_drain(code: int) -> NoReturn:
    """End the process now that it is drained, closed and its socket removed.

    Interpreter finalization would come next: it joins worker threads and frees native sessions
    (seconds, and nothing left to gain), and on its way it resets SIGTERM to the default action, so
    a service manager's repeated SIGTERM in that window killed a cleanly stopped daemon (-15, where
    the status was 0). Logs and standard streams are flushed first; nothing else waits at exit.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
