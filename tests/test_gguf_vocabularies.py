"""GGUF vocabularies of the kinds no wheel ships tokenize exactly as llama.cpp tokenizes them.

The vocabularies are tiny but real (learned by BPE from a corpus, written with the ``gguf`` package);
the reference is llama-cpp-python loading the same file with ``vocab_only=True``.  The texts are
fixed ones plus seeded random mixes of spaces, newlines, digits, non-ASCII, emoji (byte fallback)
and special tokens inside the text.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import pytest

from ratatoskr_client.types import Message
from ratatoskr_server.config import load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.local.gguf_vocab import tokenizer_from_gguf
from tests.tiny_gguf_vocab import TRAINING, write_llama_bpe_vocab, write_spm_vocab

FIXED = [
    "Hello world!",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "",
    " ",
    "\n",
    "multiple   spaces and\n\n\nnewlines\tand tabs\r\n",
    "The year 2024 had 366 days; 1234567 is larger.",
    "Naïve café — ø å “quotes” 🚀 straße über",
    "日本語のテキストです。",
    "[INST] What is 2+2? [/INST] 4</s><s>[INST]again[/INST]",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<tool>call()</tool><|user|>x<unk>",
    "It's they're WE'LL I'd",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    TRAINING,
]
_ALPHABET = [*"abcdefghTHEthe   \n\n\t0123456789'.,!?-_()[]<>/|", "é", "ß", "ü", "ø", "🚀", "日", "本"]
_ALPHABET += ["[INST]", "<tool>", "<|im_end|>", "<s>", "'s", "'LL", "\r\n", "  ", "<|eot_id|>"]
_RNG = random.Random(20240607)
RANDOM = ["".join(_RNG.choice(_ALPHABET) for _ in range(_RNG.randint(1, 40))) for _ in range(300)]

KINDS = {
    "sentencepiece (Llama 2, Mistral)": lambda p: write_spm_vocab(p),
    "sentencepiece without a space prefix (Gemma)": lambda p: write_spm_vocab(p, add_space_prefix=False),
    "llama-bpe (Llama 3)": lambda p: write_llama_bpe_vocab(p),
}


class Reference:
    """llama.cpp's tokenizer for one GGUF, closed before the interpreter shuts down."""

    def __init__(self, path: Path) -> None:
        from llama_cpp import Llama

        self.vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)

    def tokens(self, text: str) -> list[int]:
        return list(self.vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def close(self) -> None:
        self.vocab.close()


@pytest.fixture(scope="module", params=list(KINDS))
def vocabulary(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, Reference]]:
    path = KINDS[request.param](tmp_path_factory.mktemp("vocab") / "vocab.gguf")
    reference = Reference(path)
    yield tokenizer_from_gguf(gguf.GGUFReader(path)), reference
    reference.close()


def test_fixed_texts_tokenize_as_llama_cpp_does(vocabulary: tuple[Any, Reference]) -> None:
    tokenizer, reference = vocabulary
    assert tokenizer is not None
    for text in FIXED:
        assert tokenizer.encode(text, add_special_tokens=False).ids == reference.tokens(text), repr(text)


def test_random_texts_tokenize_as_llama_cpp_does(vocabulary: tuple[Any, Reference]) -> None:
    tokenizer, reference = vocabulary
    assert tokenizer is not None
    for text in RANDOM:
        assert tokenizer.encode(text, add_special_tokens=False).ids == reference.tokens(text), repr(text)


def test_byte_fallback_and_specials_are_exercised(tmp_path: Path) -> None:
    """The corpus is not vacuous: the emoji falls back to four byte tokens, [INST] is one token."""
    tokenizer = tokenizer_from_gguf(gguf.GGUFReader(write_spm_vocab(tmp_path / "v.gguf")))
    assert tokenizer is not None
    pieces = tokenizer.encode("🚀[INST]", add_special_tokens=False).tokens
    assert pieces == ["▁", "<0xF0>", "<0x9F>", "<0x9A>", "<0x80>", "[INST]"]


@pytest.mark.parametrize(
    "unreproducible",
    [
        {"flat_scores": True},  # equal scores: llama.cpp joins the leftmost pair, a BPE rank cannot say that
        {"learn_rare": True},  # pieces holding characters that are not tokens themselves
    ],
)
def test_vocabularies_that_cannot_be_reproduced_stay_estimates(tmp_path: Path, unreproducible: dict[str, bool]) -> None:
    assert tokenizer_from_gguf(gguf.GGUFReader(write_spm_vocab(tmp_path / "v.gguf", **unreproducible))) is None


MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


async def test_prompts_and_texts_of_a_sentencepiece_gguf_are_counted_exactly(tmp_path: Path) -> None:
    path = write_spm_vocab(tmp_path / "mistral-tiny.gguf", chat_template=MISTRAL_TEMPLATE)
    settings = load_settings(
        local={"model_dir": tmp_path, "preload": [], "auto_import_default": False},
        templates={"sources": {"llamacpp/mistral*": str(path)}},
    )
    gateway = EmbeddedGateway(settings)
    reference = Reference(path)
    try:
        messages = [Message("user", "Hello there, 12345 🚀"), Message("assistant", "Fine."), Message("user", "ß?")]
        rendered = await gateway.render_chat_template(messages, model="llamacpp/mistral-tiny")
        assert rendered.text == "<s>[INST] Hello there, 12345 🚀 [/INST]Fine.</s>[INST] ß? [/INST]"
        assert not rendered.tokens_estimated and rendered.tokens == len(reference.tokens(rendered.text))
        counted = await gateway.count_tokens(["The quick brown fox", " x"], model="llamacpp/mistral-tiny")
        assert not counted.estimated
        assert counted.counts == [len(reference.tokens("The quick brown fox")), len(reference.tokens(" x"))]
    finally:
        reference.close()
        await gateway.close()
