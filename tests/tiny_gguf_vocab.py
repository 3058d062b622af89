"""Tiny vocabulary-only GGUF files of the kinds no wheel ships: SentencePiece ``llama`` vocabularies
(Llama 2, Mistral, Gemma style) and byte-level BPE ``llama-bpe`` ones (Llama 3 style).

Each vocabulary is learned from a small corpus by plain BPE (merge the most frequent pair, again and
again), so its tokens and scores look like a real one's.  The files carry the few ``llama`` model
keys that llama.cpp reads before it loads a vocabulary, so ``Llama(path, vocab_only=True)`` is the
reference tokenizer in the tests.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import gguf
from tokenizers.pre_tokenizers import ByteLevel

from ratatoskr_server.local.gguf_vocab import LLAMA3_SPLIT

#: What the vocabularies are learned from: English with code, digits and a little non-ASCII.
TRAINING = """The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs.
Hello world! Hello there, how are you today? I am fine, thank you.
def hello(name): return "Hello, " + name
for i in range(10): print(i * 2)
The year 2024 had 366 days, and 12345 is a number.
Café naïve résumé über straße
    indented line with spaces
tabs\tand\tnew
lines
"""

SPECIALS = {"<unk>": gguf.TokenType.UNKNOWN, "<s>": gguf.TokenType.CONTROL, "</s>": gguf.TokenType.CONTROL}
CONTROL = ["[INST]", "[/INST]", "<|im_start|>", "<|im_end|>"]
USER_DEFINED = ["<tool>", "<|user|>"]


def learn_merges(words: Counter[tuple[str, ...]], count: int) -> list[tuple[str, str]]:
    """Plain BPE: the most frequent adjacent pair, ``count`` times (ties: the first in sorted order)."""
    merges: list[tuple[str, str]] = []
    words = Counter(words)
    for _ in range(count):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, n in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += n
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, n in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


def _llama_keys(writer: gguf.GGUFWriter, vocab_size: int) -> None:
    """The model keys llama.cpp reads before the vocabulary (no tensors: vocab_only never needs them)."""
    writer.add_context_length(512)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(16)
    writer.add_vocab_size(vocab_size)


def _write(path: Path, writer: gguf.GGUFWriter) -> Path:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_spm_vocab(
    path: Path,
    *,
    add_space_prefix: bool = True,
    merges: int = 300,
    rare: str = "ßü",
    learn_rare: bool = False,
    flat_scores: bool = False,
    chat_template: str = "",
) -> Path:
    """A SentencePiece-style ``llama`` vocabulary: specials, 256 byte tokens, merged pieces scored by
    when they were learned, then the corpus' characters but the ``rare`` ones (which fall back to
    bytes).  With ``learn_rare`` the pieces may hold rare characters that are not tokens themselves,
    which SentencePiece never does and llama.cpp handles in a way a BPE model cannot reproduce; with
    ``flat_scores`` every piece scores the same (llama.cpp then joins the leftmost pair first)."""
    text = TRAINING if learn_rare else "".join(c for c in TRAINING if c not in rare)
    text = text.replace(" ", "▁")
    lines = [("▁" + line if add_space_prefix else line) for line in text.split("\n") if line]
    words = Counter(tuple(line) for line in lines)
    learned = learn_merges(words, merges)
    tokens: list[str] = list(SPECIALS) + CONTROL + USER_DEFINED
    types = (
        list(SPECIALS.values())
        + [gguf.TokenType.CONTROL] * len(CONTROL)
        + [gguf.TokenType.USER_DEFINED] * len(USER_DEFINED)
    )
    scores = [0.0] * len(tokens)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    scores += [0.0] * 256
    for i, (left, right) in enumerate(learned):
        tokens.append(left + right)
        types.append(gguf.TokenType.NORMAL)
        scores.append(0.0 if flat_scores else -float(i))
    chars = sorted({c for line in lines for c in line} - set(rare))
    for j, char in enumerate(chars):
        if char not in tokens:
            tokens.append(char)
            types.append(gguf.TokenType.NORMAL)
            scores.append(-float(len(learned) + j))
    writer = gguf.GGUFWriter(path, "llama")
    _llama_keys(writer, len(tokens))
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_space_prefix(add_space_prefix)
    if chat_template:
        writer.add_chat_template(chat_template)
    return _write(path, writer)


def write_llama_bpe_vocab(path: Path, *, merges: int = 300) -> Path:
    """A byte-level BPE vocabulary pre-tokenized as Llama 3's (``tokenizer.ggml.pre = llama-bpe``)."""
    from tokenizers import Regex, pre_tokenizers

    split = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    words = Counter(tuple(piece) for piece, _ in split.pre_tokenize_str(TRAINING))
    learned = learn_merges(words, merges)
    alphabet = ByteLevel.alphabet()
    tokens = sorted(alphabet) + [left + right for left, right in learned]
    tokens = list(dict.fromkeys(tokens))
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for special in ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]:
        tokens.append(special)
        types.append(gguf.TokenType.CONTROL)
    tokens.append("<tool>")
    types.append(gguf.TokenType.USER_DEFINED)
    writer = gguf.GGUFWriter(path, "llama")
    _llama_keys(writer, len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([f"{left} {right}" for left, right in learned])
    writer.add_bos_token_id(tokens.index("<|begin_of_text|>"))
    writer.add_eos_token_id(tokens.index("<|eot_id|>"))
    return _write(path, writer)
