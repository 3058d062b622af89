"""Ratatoskr's daemon and gateway core."""

from __future__ import annotations


def package_version() -> str:
    """The installed distribution's version (the CLI's --version, Admin Status, the SERVING line).

    importlib.metadata is imported here, not with the package: it costs about 25 ms, which every
    CLI command would otherwise pay before doing anything."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ratatoskr")
    except PackageNotFoundError:
        return "0+unknown"
