"""Masking secrets in text: one rule set for logs and for upstream error messages alike."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "********"
#: Shapes of API keys and bearer tokens, masked even when nobody told us the value.
_KEY_SHAPES = re.compile(r"(sk-[A-Za-z0-9_\-]{12,}|(?i:bearer)\s+[A-Za-z0-9._\-]{8,}|hf_[A-Za-z0-9]{12,})")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret (longest first) and every key-shaped token replaced."""
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _KEY_SHAPES.sub(MASK, text)
