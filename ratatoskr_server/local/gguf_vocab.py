"""A GGUF's own vocabulary as a ``tokenizers`` tokenizer, for exact token counts of its prompts.

Only for vocabularies whose tokenization is known to match llama.cpp's:
- byte-level BPE (``tokenizer.ggml.model = gpt2``) pre-tokenized as ``gpt2``, ``smollm`` (the same,
  digits split one by one) or ``llama-bpe`` (Llama 3's regex; whole words found in the vocabulary
  are taken as they are, as llama.cpp does for it);
- SentencePiece-style vocabularies (``llama``: Llama 2, Mistral, Gemma), see ``gguf_spm``.
Others return None and their counts stay estimates, reported as such, rather than counts that are
quietly wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from ratatoskr_server.local import gguf_fields as fields
from ratatoskr_server.local.gguf_spm import spm_tokenizer

#: Llama 3's split, as its tokenizer.json writes it; llama.cpp implements the same by hand.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _smollm() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2()])


def _llama3() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


#: ``tokenizer.ggml.pre`` -> (pre-tokenizer, whether whole words in the vocabulary skip the merges).
_PRE_TOKENIZERS: dict[str, tuple[Callable[[], pre_tokenizers.PreTokenizer], bool]] = {
    "gpt2": (_gpt2, False),
    "smollm": (_smollm, False),
    "llama-bpe": (_llama3, True),
    "llama3": (_llama3, True),
    "llama-v3": (_llama3, True),
}


def _matched_whole(tokens: list[str], kinds: list[int]) -> list[AddedToken]:
    return [
        AddedToken(t, special=True, normalized=False)
        for t, k in zip(tokens, kinds, strict=False)
        if k in fields.MATCHED_WHOLE
    ]


def _kinds(reader: Any) -> list[int]:
    return [int(k) for k in fields.numbers(reader, "tokenizer.ggml.token_type")]


def _byte_level(reader: Any) -> Tokenizer | None:
    known = _PRE_TOKENIZERS.get(fields.string(reader, "tokenizer.ggml.pre"))
    if known is None or "tokenizer.ggml.merges" not in reader.fields:
        return None
    pre, ignore_merges = known
    tokens = fields.strings(reader, "tokenizer.ggml.tokens")
    merges = [
        (left, right) for left, _, right in (m.partition(" ") for m in fields.strings(reader, "tokenizer.ggml.merges"))
    ]
    bpe = models.BPE(
        vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False, ignore_merges=ignore_merges
    )
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(_matched_whole(tokens, _kinds(reader)))
    return tokenizer


def _sentencepiece(reader: Any) -> Tokenizer | None:
    if "tokenizer.ggml.scores" not in reader.fields:
        return None
    return spm_tokenizer(
        fields.strings(reader, "tokenizer.ggml.tokens"),
        fields.numbers(reader, "tokenizer.ggml.scores"),
        _kinds(reader),
        unknown_id=fields.integer(reader, "tokenizer.ggml.unknown_token_id", 0),
        add_space_prefix=fields.flag(reader, "tokenizer.ggml.add_space_prefix", True),
    )


_MODELS: dict[str, Callable[[Any], Tokenizer | None]] = {"gpt2": _byte_level, "llama": _sentencepiece}


def tokenizer_from_gguf(reader: Any) -> Tokenizer | None:
    """The vocabulary of an open ``gguf.GGUFReader`` as a tokenizer, or None when its kind is not one
    this module reproduces exactly."""
    build = _MODELS.get(fields.string(reader, "tokenizer.ggml.model"))
    return None if build is None or "tokenizer.ggml.tokens" not in reader.fields else build(reader)
