"""Presets: ``ratatoskr:<tier>/<capability>`` names for a model plus default parameters.

A preset fills only what the caller left unset, so a caller can always
override a preset's temperature or max_tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ratatoskr_client.types import ChatOptions
from ratatoskr_server.config import PresetSettings

_FILLABLE = ("temperature", "max_tokens", "top_p", "top_k", "stop", "frequency_penalty", "presence_penalty", "seed")


def apply_preset(options: ChatOptions, presets: Mapping[str, PresetSettings]) -> ChatOptions:
    preset = presets.get(options.model)
    if preset is None:
        return options
    filled: dict[str, Any] = {"model": preset.model}
    for name in _FILLABLE:
        mine, theirs = getattr(options, name), getattr(preset, name)
        if (mine is None or mine == []) and theirs is not None and theirs != []:
            filled[name] = theirs
    return replace(options, **filled)
