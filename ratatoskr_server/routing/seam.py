"""The seam where a resumed answer joins the text the caller already has: the repeat is dropped.

A model asked to continue often starts a little before the cut (the word it was in, the sentence's
last words); one given the answer as a prefill writes only the rest, except whitespace the wire
could not carry (Anthropic refuses a prefill that ends in it).  The overlap removed is the longest
suffix of the delivered text, at most ``limit`` characters, that the new leg's text starts with.
Two guards keep a genuine continuation from being eaten:

* the overlap must start where a token can start (the beginning, next to whitespace, or a change
  between word and non-word characters): a model that repeats restarts a word, never half of one,
  so ``"se"`` + ``"e you"`` stays ``"see you"``;
* after a prefill, only whitespace can overlap (the model saw everything else).

The delivered text holds only whole characters (the adapters decode complete events, so a cut in
the middle of a UTF-8 sequence loses the incomplete event, never half a character), and so
does every leg; the comparison is by code point.
"""

from __future__ import annotations


def _token_start(text: str, i: int) -> bool:
    if i == 0:
        return True
    before, at = text[i - 1], text[i]
    return before.isspace() or at.isspace() or before.isalnum() != at.isalnum()


class Seam:
    """Feeds the new leg's first text through until the overlap is known, then lets it pass."""

    __slots__ = ("_buffer", "_lengths", "_tail")

    def __init__(self, delivered: str, limit: int, *, whitespace_only: bool = False) -> None:
        tail = delivered[-limit:] if limit > 0 else ""
        start = len(delivered) - len(tail)
        #: Overlap lengths that could be repeated, longest first.
        self._lengths = [
            k
            for k in range(len(tail), 0, -1)
            if _token_start(delivered, start + len(tail) - k) and (not whitespace_only or tail[-k:].isspace())
        ]
        self._tail = tail
        self._buffer = ""

    def feed(self, text: str) -> str | None:
        """The new leg's text to send once the overlap is decided (possibly ""), or None while it is not."""
        self._buffer += text
        buffered = self._buffer
        size = len(buffered)
        for k in self._lengths:
            suffix = self._tail[-k:]
            if k > size:
                if suffix.startswith(buffered):
                    return None  # a longer repeat is still possible: wait for more text
            elif buffered.startswith(suffix):
                self._buffer = ""
                return buffered[k:]
        self._buffer = ""
        return buffered

    def flush(self) -> str:
        """What is buffered, with the overlap it shows removed (the leg ended or moved on to non-text)."""
        buffered = self._buffer
        self._buffer = ""
        for k in self._lengths:
            if k <= len(buffered) and buffered.startswith(self._tail[-k:]):
                return buffered[k:]
        return buffered


def join(delivered: str, continued: str, limit: int, *, whitespace_only: bool = False) -> str:
    """``delivered`` and ``continued`` as one text, the overlap removed (the whole seam at once)."""
    seam = Seam(delivered, limit, whitespace_only=whitespace_only)
    rest = seam.feed(continued)
    return delivered + (seam.flush() if rest is None else rest)
