"""Caller API keys: their format, how they are stored, how a presented one is checked.

A token is ``rtk_<id>_<secret>``: ``id`` (12 hex characters) names the key without revealing it,
so the daemon finds the one record to compare against and ``keys list`` can show which key is
which; ``secret`` is 256 random bits.  Only ``sha256:<id>:<hex digest of the whole token>`` is
stored.  A salted slow hash (scrypt, PBKDF2) protects *guessable* passwords; a 256-bit random
token cannot be guessed, so one SHA-256 is as strong and costs microseconds per call (the
GitHub/Stripe practice for API keys).  The digest is compared with ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

TOKEN_PREFIX = "rtk_"
_ID_HEX = 12
_TOKEN = re.compile(rf"^{TOKEN_PREFIX}([0-9a-f]{{{_ID_HEX}}})_[A-Za-z0-9_-]{{43}}$")
_STORED = re.compile(rf"^sha256:([0-9a-f]{{{_ID_HEX}}}):([0-9a-f]{{64}})$")


@dataclass(frozen=True, slots=True)
class StoredKey:
    """What the secrets file holds for one key: its public id and the token's digest."""

    key_id: str
    digest: str

    def __str__(self) -> str:
        return f"sha256:{self.key_id}:{self.digest}"


def new_token() -> tuple[str, StoredKey]:
    """A fresh token (shown once, never stored) and what to store for it."""
    key_id = secrets.token_hex(_ID_HEX // 2)
    token = f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return token, StoredKey(key_id, _digest(token))


def parse_stored(text: str) -> StoredKey | None:
    match = _STORED.match(text)
    return StoredKey(match.group(1), match.group(2)) if match else None


def key_id_of(token: str) -> str | None:
    """The id of a well-formed token; None for anything else (which then matches no key)."""
    match = _TOKEN.match(token)
    return match.group(1) if match else None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


class KeyRing:
    """Stored keys by id; ``match`` returns the name of the key a token is, or None."""

    def __init__(self, stored: Mapping[str, StoredKey]) -> None:
        #: id -> (name, digest); two keys sharing an id (1 in 2^48) would make the later one unusable.
        self._by_id = {key.key_id: (name, key.digest) for name, key in stored.items()}

    def __len__(self) -> int:
        return len(self._by_id)

    def match(self, token: str) -> str | None:
        key_id = key_id_of(token)
        entry = self._by_id.get(key_id) if key_id else None
        if entry is None:
            return None
        name, digest = entry
        return name if hmac.compare_digest(_digest(token), digest) else None
