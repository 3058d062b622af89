"""A GGUF's own vocabulary as a ``tokenizers`` tokenizer, for exact token counts of its prompts.

Only for vocabularies whose pre-tokenization is known to match llama.cpp's: byte-level BPE with
``tokenizer.ggml.pre`` of ``gpt2`` or ``smollm`` (the same, with digits split one by one).  Others
(llama-bpe's regex, SentencePiece ``llama`` vocabularies) return None and their counts stay
estimates, reported as such, rather than counts that are quietly wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

#: llama.cpp's token type for control tokens (<|im_start|> …): matched whole, never split.
_CONTROL = 3


def _gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _smollm() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2()])


_PRE_TOKENIZERS: dict[str, Callable[[], pre_tokenizers.PreTokenizer]] = {"gpt2": _gpt2, "smollm": _smollm}


def _strings(reader: Any, key: str) -> list[str]:
    field = reader.fields[key]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def _string(reader: Any, key: str) -> str:
    field = reader.fields.get(key)
    return "" if field is None else bytes(field.parts[field.data[0]]).decode("utf-8")


def tokenizer_from_gguf(reader: Any) -> Tokenizer | None:
    """The vocabulary of an open ``gguf.GGUFReader`` as a tokenizer, or None when its kind is not one
    this module reproduces exactly."""
    pre = _PRE_TOKENIZERS.get(_string(reader, "tokenizer.ggml.pre"))
    if _string(reader, "tokenizer.ggml.model") != "gpt2" or pre is None or "tokenizer.ggml.merges" not in reader.fields:
        return None
    tokens = _strings(reader, "tokenizer.ggml.tokens")
    merges = [(left, right) for left, _, right in (m.partition(" ") for m in _strings(reader, "tokenizer.ggml.merges"))]
    kinds_field = reader.fields.get("tokenizer.ggml.token_type")
    kinds = [int(kinds_field.parts[i][0]) for i in kinds_field.data] if kinds_field is not None else []
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False)
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre()
    tokenizer.decoder = decoders.ByteLevel()
    control = [
        AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, kinds, strict=False) if k == _CONTROL
    ]
    tokenizer.add_special_tokens(control)
    return tokenizer
