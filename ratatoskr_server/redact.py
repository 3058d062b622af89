"""Masking secrets in text: one rule set for logs and for upstream error messages alike."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "********"
#: Shapes of API keys and bearer tokens, masked even when nobody told us the value.
_KEY_SHAPES = re.compile(
    r"(sk-[A-Za-z0-9_\-]{12,}|rtk_[A-Za-z0-9_\-]{12,}|(?i:bearer)\s+[A-Za-z0-9._\-]{8,}|hf_[A-Za-z0-9]{12,})"
)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret (longest first) and every key-shaped token replaced."""
    return scrub_ordered(text, ordered_secrets(secrets))


def ordered_secrets(secrets: Iterable[str]) -> tuple[str, ...]:
    """The secrets worth masking (four characters or more), longest first, so that one inside
    another is masked as part of the longer; for a caller that scrubs many texts with the same set."""
    return tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))


#: The shortest text ``_KEY_SHAPES`` can match ("Bearer" and a space and eight characters; "sk-",
#: "hf_" and twelve): a shorter text is not searched (most of a log line's fields are short).
_SHORTEST_SHAPE = 15


def scrub_ordered(text: str, secrets: tuple[str, ...]) -> str:
    """``scrub`` with secrets already put in order by ``ordered_secrets``."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return _KEY_SHAPES.sub(MASK, text) if len(text) >= _SHORTEST_SHAPE else text


#: Header and query-parameter names whose values are credentials (Authorization, api-key, X-Token, sig…).
SENSITIVE_NAME = re.compile(r"auth|key|token|secret|passw|signature|\bsig\b|cookie|credential|session", re.IGNORECASE)


def url_credentials(url: str) -> list[str]:
    """The user-info of a URL (``https://user:pass@host``): the password, and user:pass together."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    if parts.password:
        return [f"{parts.username}:{parts.password}", parts.password]
    return [parts.username] if parts.username else []


def display_url(url: str) -> str:
    """``url`` fit to show a person: user-info replaced by the mask, the rest as given."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not (parts.username or parts.password):
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{MASK}@{host}"))
