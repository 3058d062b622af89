"""A known answer that upstream doubles stream, cut on command, and continue from any prefix.

For streaming failover: the ``story`` model of a double streams ``STORY`` in pieces that split
words and multi-byte characters' neighbours alike; a request carrying ``x_double_cut_at`` (a body
field, sent through ``raw_provider_options``) gets only that many bytes of the stream, then the
body ends (mid-event, mid-UTF-8 sequence or between events, wherever the byte falls).  The
``story-continue`` model continues an answer that begins with a prefix of ``STORY``, the way real
models do:

* given the prefix as a prefill (Anthropic's trailing assistant message, vLLM's
  ``continue_final_message``), it writes exactly the rest of the story after it;
* asked to continue (the prefix as an assistant turn, then a user turn), it restarts the word it
  was in (or, at a word's end, the last word) and goes on from there, so the gateway must drop
  the repeat.

A prefix that is not the start of the story is refused with a 400, so a gateway that hands over a
corrupted answer fails the test instead of passing it on.
"""

from __future__ import annotations

import json
from typing import Any

STORY = (
    "Ratatoskr runs up and down Yggdrasil, carrying words between the eagle at the top and "
    "Níðhöggr gnawing at the roots. Grüße aus Bergen: 🐿️ naïve café façade — “quoted” ✓.\n\n"
    "Zweiter Absatz: 松鼠在树上跑。Every message arrives whole, even when a branch breaks mid-sentence; "
    "the squirrel remembers where it stopped, finds another branch, and goes on: ∑ ≈ ∞ 🌳🌲."
)
#: Sizes (code points) the story is cut into for streaming, cycled: they split words anywhere.
PIECE_SIZES = (3, 7, 1, 12, 5, 9, 2, 4, 11, 6)
#: The request body field that commands a cut: the number of bytes of the stream to send.
CUT_FIELD = "x_double_cut_at"
#: Token counts the doubles report: the cut story never gets to report its own.
STORY_USAGE = {"prompt_tokens": 30, "completion_tokens": 90, "total_tokens": 120}
CONTINUE_USAGE = {"prompt_tokens": 70, "completion_tokens": 25, "total_tokens": 95}


def pieces(text: str, sizes: tuple[int, ...] = PIECE_SIZES) -> list[str]:
    out: list[str] = []
    i = k = 0
    while i < len(text):
        out.append(text[i : i + sizes[k % len(sizes)]])
        i += sizes[k % len(sizes)]
        k += 1
    return out


def data(payload: Any, event: str | None = None) -> bytes:
    """One SSE event with raw UTF-8 JSON (as the APIs send it), so a byte cut can split a character."""
    head = f"event: {event}\n" if event else ""
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"{head}data: {text}\n\n".encode()


def restart(prefix: str) -> int:
    """Where a model asked to continue ``prefix`` starts writing again: the start of its last word."""
    end = len(prefix.rstrip())
    start = end
    while start > 0 and not prefix[start - 1].isspace():
        start -= 1
    return start


def continuation(prefix: str, prefilled: bool) -> str | None:
    """The text ``story-continue`` writes after ``prefix`` (None: the prefix is not the story's start)."""
    if not STORY.startswith(prefix):
        return None
    return STORY[len(prefix) :] if prefilled else STORY[restart(prefix) :]


def cut_at(body: dict[str, Any]) -> int | None:
    value = body.get(CUT_FIELD)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
