"""Presets: ``ratatoskr:<tier>/<capability>`` names for a model plus default parameters.

A preset fills only what the caller left unset, so a caller can always
override a preset's temperature or max_tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import fields, replace
from typing import Any

from ratatoskr_client.types import ChatEvent, ChatOptions
from ratatoskr_server.config import PresetSettings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import Call, Result
from ratatoskr_server.pipeline.chain import Next, NextStream, Stage

#: Generation parameters a preset can carry: its fields that are ChatOptions fields too.
_FILLABLE = tuple(f.name for f in fields(ChatOptions) if f.name in PresetSettings.model_fields and f.name != "model")


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


class PresetStage(Stage):
    """A preset name becomes its model, and its defaults fill what the caller left unset."""

    def __init__(self, presets: Mapping[str, PresetSettings]) -> None:
        self.presets = presets

    def resolve(self, call: Call) -> Call:
        preset = self.presets.get(call.model)
        if preset is None:
            return call
        options = apply_preset(call.options, self.presets) if call.options is not None else None
        return call.but(model=preset.model, options=options)

    async def unary(self, call: Call, ctx: RequestContext, next: Next) -> Result:
        return await next(self.resolve(call), ctx)

    def stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        return next(self.resolve(call), ctx)
