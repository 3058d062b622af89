"""How many tokens an answer may take: one rule, read by the context and budget stages alike.

The caller's ``max_tokens`` wins; else the registry's max output for the model; else the
``context.output_reserve_tokens`` setting.  The context stage must also leave room for a prompt, so
with a known window it takes the model's max output only when that leaves at least half the window,
and never reserves more than half (``window``); the budget stage prices the longest answer the
model can give, so it passes no window.
"""

from __future__ import annotations


def output_reserve(asked: int | None, max_output: int, default: int, window: int = 0) -> int:
    """Tokens to reserve for the answer; ``window`` 0: no window to share (the budget's bound)."""
    if asked is not None:
        return asked
    if window <= 0:
        return max_output if max_output > 0 else default
    if 0 < max_output < window // 2:
        return max_output
    return min(default, window // 2)
