"""Ratatoskr's daemon and gateway core."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The installed distribution's version (the CLI's --version, Admin Status, the SERVING line)."""
    try:
        return version("ratatoskr")
    except PackageNotFoundError:
        return "0+unknown"
