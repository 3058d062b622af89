"""Exact-match keys: a hash of the whole request as it will be sent, so different requests never meet.

The base covers everything but the items: task, the resolved target (provider and model after
aliases, presets and planning), the local model's file revision, every parameter (provider options
included), the caller (unless entries are shared), and whether the answer is a stream.  Each item
(an input, a pair, or the whole conversation) is hashed onto the base, so one cached input serves
any later batch that holds it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import Call, ChatInput, ClassifyInput, EmbedInput, GenerateInput, NliInput

#: Bumped when what a key covers or how values are encoded changes: old entries simply miss.
KEY_VERSION = 1


def _canonical(data: Any) -> bytes:
    # default=repr: provider options are JSON from a wire, but a value JSON cannot write must still
    # land in the key rather than be ignored.
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr).encode()


def base_key(call: Call, ctx: RequestContext, revision: str, *, shared: bool, stream: bool = False) -> bytes:
    """The digest of everything in ``call`` except its items."""
    payload = call.payload
    assert call.target is not None, "the cache stage runs after the plan stage"
    fixed: dict[str, Any] = {"truncate": payload.truncate} if isinstance(payload, EmbedInput | NliInput) else {}
    material = {
        "v": KEY_VERSION,
        "task": call.task.value,
        "target": call.target.id,
        "revision": revision,
        "caller": "" if shared else ctx.caller,
        "payload": fixed,
        "options": None if call.options is None else asdict(call.options),
        "stream": stream,
    }
    return hashlib.blake2b(_canonical(material), digest_size=20).digest()


def item_key(base: bytes, item: Any) -> str:
    """The key of one item on ``base``: a text (bytes hashed as they are) or any JSON-able value."""
    data = item.encode() if isinstance(item, str) else _canonical(item)
    return hashlib.blake2b(data, digest_size=20, key=base).hexdigest()


def whole_item(payload: ClassifyInput | ChatInput | GenerateInput) -> Any:
    """The one item of a call cached as a whole."""
    return asdict(payload)
