"""``ratatoskr serve`` from the command line to a running daemon, in the order that starts it soonest.

The configuration is read and checked first (a bad one never starts anything), then, inside the
event loop, the local side is built and its preload models start loading on the loader threads;
only then is the rest imported (gRPC, fronts, providers, stages: about a third of a second) and
the daemon built around the pool that is already loading. ONNX Runtime builds a session with the
GIL released, so the two overlap on a machine with more than one core.

Kept apart from daemon.py so that importing this module costs the configuration only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ratatoskr_server.config import ConfigError, Settings, load_settings, resolve_config_path
from ratatoskr_server.preflight import Level, check_settings
from ratatoskr_server.telemetry.logs import configure_logging

# The daemon's logger: these lines are the daemon's own, whichever module writes them.
log = logging.getLogger("ratatoskr_server.daemon")


def _file_digest(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return ""  # load_settings says so, in its words


def read_configuration(path: Path | None, overrides: dict[str, Any]) -> tuple[Settings, str]:
    """The settings and the sha256 of the very file bytes they came from.

    The file is hashed before and after loading; a file rewritten in between (an editor, a
    ConfigMap update) is refused rather than reported under a digest it was not read from.
    """
    before = _file_digest(path)
    settings = load_settings(path, **overrides)
    if _file_digest(path) != before:
        raise ConfigError(f"configuration file {path} changed while it was being read; try again")
    return settings, before


async def _run_daemon(settings: Settings, path: Path | None, overrides: dict[str, Any], digest: str) -> int | None:
    """The daemon's exit status, or None when it could not start (the reason is logged)."""
    from ratatoskr_server.local.parts import LocalParts
    from ratatoskr_server.telemetry.metrics import Metrics
    from ratatoskr_server.telemetry.pool import PoolTelemetry
    from ratatoskr_server.telemetry.tracing import Tracing

    metrics = Metrics(enabled=settings.metrics.enabled)
    tracing = Tracing.from_settings(settings.tracing)
    local = LocalParts.from_settings(settings, PoolTelemetry(metrics, tracing))
    await local.pool.begin_loading(settings.local.preload)

    from ratatoskr_server.daemon import Daemon, DaemonError  # the rest, while the models load

    try:
        daemon = Daemon(settings, path, overrides, config_sha256=digest, metrics=metrics, tracing=tracing, local=local)
        return await daemon.run()
    except DaemonError as err:
        # The reason is the last line: the process ends now, and whatever the pool holds goes with it.
        log.error(str(err))
        return None


def serve(config_path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None) -> int:
    """Entry point of ``ratatoskr serve``: the exit status of the daemon (2: fix the configuration)."""
    overrides = overrides or {}
    path = resolve_config_path(config_path)
    try:
        settings, digest = read_configuration(path, overrides)
    except OSError as err:
        configure_logging("INFO", "auto")
        log.error(f"cannot read {path}: {err.strerror}")
        return 2
    except ConfigError as err:
        configure_logging("INFO", "auto")
        log.error(str(err))
        return 2
    configure_logging(settings.logging.level, settings.logging.format, settings.secret_values())
    findings = check_settings(settings, config_path)
    for finding in findings:
        (log.error if finding.level is Level.ERROR else log.warning)(str(finding))
    if any(f.level is Level.ERROR for f in findings):
        log.error("the configuration has errors; nothing was started (`ratatoskr config check` lists them)")
        return 2
    try:
        import uvloop

        code = uvloop.run(_run_daemon(settings, path, overrides, digest))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        print("interrupted", file=sys.stderr)
        return 130
    if code is None:
        return 1
    from ratatoskr_server.daemon import exit_after_drain

    exit_after_drain(code)
