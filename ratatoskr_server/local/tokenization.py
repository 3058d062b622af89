"""The model's own tokenizer, with padding and truncation decided here, not by the file.

Shipped tokenizer.json files often pad every input to a fixed length (MiniLM's
pads to 128): we pad to the longest input of each batch instead (or to the
fixed length a graph was exported with), and decide truncation per input so
an over-long text can be reported rather than silently cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from tokenizers import Encoding, Tokenizer

from ratatoskr_client.errors import InvalidArgument
from ratatoskr_client.types import Token

#: A text, or a (premise, hypothesis) pair for cross-encoders.
TextInput = str | tuple[str, str]
_SEQUENTIAL_MAX = 4


@dataclass(frozen=True, slots=True)
class TokenizedBatch:
    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]
    token_type_ids: npt.NDArray[np.int64]


class TextTokenizer:
    def __init__(self, tokenizer_json: str, max_length: int, model_name: str, *, pad_to: int | None = None) -> None:
        """``tokenizer_json`` is the file's text as the store checked (and maybe decrypted) it."""
        self.max_length = max_length
        self.model_name = model_name
        self.pad_to = pad_to
        self._full = Tokenizer.from_str(tokenizer_json)
        padding = self._full.padding
        self.pad_id = int(padding["pad_id"]) if padding else (self._full.token_to_id("[PAD]") or 0)
        self._full.no_padding()
        self._full.no_truncation()
        # A second instance that truncates, so a cut input keeps its closing special tokens
        # (and a cut pair is shortened from its longer side, as HF does).
        self._cut = Tokenizer.from_str(tokenizer_json)
        self._cut.no_padding()
        self._cut.enable_truncation(max_length)

    def encode(self, inputs: Sequence[TextInput], *, truncate: bool, what: str = "input") -> list[Encoding]:
        """Encodings in input order; over-long ones are cut, or refused naming their index."""
        batch = list(inputs)
        encodings: list[Encoding]
        if len(batch) <= _SEQUENTIAL_MAX:
            # A few texts: encode_batch's thread-pool fan-out costs more than it saves.
            encodings = [self._full.encode(*x) if isinstance(x, tuple) else self._full.encode(x) for x in batch]
        else:
            encodings = self._full.encode_batch(batch)
        for i, enc in enumerate(encodings):
            if len(enc.ids) <= self.max_length:
                continue
            if not truncate:
                raise InvalidArgument(
                    f"{what} {i} has {len(enc.ids)} tokens but model '{self.model_name}' reads at most "
                    f"{self.max_length}; shorten it or send truncate=true to cut it"
                )
            encodings[i] = self._cut.encode(*batch[i]) if isinstance(batch[i], tuple) else self._cut.encode(batch[i])
        return encodings

    @staticmethod
    def was_cut(encoding: Encoding) -> bool:
        return len(encoding.overflowing) > 0

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model would read them (special tokens included, before truncation)."""
        return [len(e.ids) for e in self._full.encode_batch(list(texts))]

    def tokens(self, text: str, *, add_special_tokens: bool) -> list[Token]:
        enc = self._full.encode(text, add_special_tokens=add_special_tokens)
        return [
            Token(id=i, text=t, start=s, end=e) for i, t, (s, e) in zip(enc.ids, enc.tokens, enc.offsets, strict=True)
        ]

    def pad(self, encodings: Sequence[Encoding]) -> TokenizedBatch:
        """Right-pad to the longest encoding of this batch, or to the graph's fixed length."""
        lengths = [len(e.ids) for e in encodings]
        width = self.pad_to or max(lengths, default=0) or 1
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = lengths[row]
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
            types[row, :n] = enc.type_ids
        return TokenizedBatch(ids, mask, types)
