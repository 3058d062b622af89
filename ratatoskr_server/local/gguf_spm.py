"""A SentencePiece-style GGUF vocabulary (``tokenizer.ggml.model = llama``: Llama 2, Mistral,
Gemma) as a ``tokenizers`` tokenizer that tokenizes exactly as llama.cpp does.

llama.cpp's SPM tokenizer starts from the text's characters (spaces written ``▁``, one prefixed
when ``add_space_prefix``, to the text and after every special token) and keeps joining the
adjacent pair whose joined text is the best-scored token, leftmost first on equal scores;
characters that never join a token fall back to ``<0xNN>`` byte tokens.  A BPE model reproduces
that when its merges are every (left, right) split of a token into two tokens, ranked by the joined
token's score.  Two cases it cannot reproduce return None, so their counts stay flagged estimates
rather than quietly off by one: two different tokens of equal score (ranked arbitrarily here where
llama.cpp takes the leftmost pair), and a token holding a character that is not itself a token
(llama.cpp joins the bare character; a BPE merge needs both halves in the vocabulary).  Vocabularies
that SentencePiece trained have neither.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

from ratatoskr_server.local.gguf_fields import BYTE, MATCHED_WHOLE

SPACE = "▁"


def _merges(
    tokens: Sequence[str], scores: Sequence[float], kinds: Sequence[int], vocab: dict[str, int]
) -> list[tuple[str, str]] | None:
    """Every split of a token into two tokens, best-scored joined token first; None when the
    vocabulary is one of the two kinds this cannot reproduce.

    Tokens matched whole (control, user-defined, unknown) are left out: they are cut from the text
    before tokenizing, so no stretch of what remains can join into one.
    """
    found: list[tuple[float, int, int, str, str]] = []
    score_owner: dict[float, str] = {}
    for token_id, token in enumerate(tokens):
        kind = kinds[token_id] if token_id < len(kinds) else 0
        if vocab.get(token) != token_id or kind in MATCHED_WHOLE:
            continue  # a duplicate text (llama.cpp too knows only its first id), or matched whole
        if kind != BYTE and any(char not in vocab for char in token):
            return None
        splits = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in vocab and token[k:] in vocab]
        if not splits:
            continue
        score = scores[token_id]
        if score_owner.setdefault(score, token) != token:
            return None
        found += [(-score, token_id, len(left), left, right) for left, right in splits]
    found.sort()
    return [(left, right) for _, _, _, left, right in found]


def spm_tokenizer(
    tokens: Sequence[str],
    scores: Sequence[float],
    kinds: Sequence[int],
    *,
    unknown_id: int,
    add_space_prefix: bool,
) -> Tokenizer | None:
    """The vocabulary as a tokenizer, or None when it cannot be reproduced exactly."""
    if len(scores) != len(tokens) or not 0 <= unknown_id < len(tokens):
        return None
    vocab: dict[str, int] = {}
    for token_id, token in enumerate(tokens):
        vocab.setdefault(token, token_id)
    merges = _merges(tokens, scores, kinds, vocab)
    if merges is None:
        return None
    model = models.BPE(vocab=vocab, merges=merges, unk_token=tokens[unknown_id], byte_fallback=True, fuse_unk=True)
    tokenizer = Tokenizer(model)
    escape = normalizers.Replace(" ", SPACE)
    # Each stretch of text between special tokens is normalized alone: the prefix goes before each.
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), escape]) if add_space_prefix else escape
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    tokenizer.decoder = decoders.Sequence([*steps, decoders.Strip(" ", 1, 0)] if add_space_prefix else steps)
    whole = [
        AddedToken(t, special=True, normalized=False)
        for t, kind in zip(tokens, kinds, strict=False)
        if kind in MATCHED_WHOLE and vocab.get(t) is not None
    ]
    tokenizer.add_special_tokens(whole)
    return tokenizer
