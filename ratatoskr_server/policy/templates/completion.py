"""What a raw-prompt (``/completions``) endpoint needs from a chat template besides the prompt.

A chat endpoint knows where the model's turn ends and which tokens the tokenizer adds; a
completion endpoint knows neither, so both come from the template's source:

- Where the turn ends: a built-in family declares it.  For a model's own template (GGUF,
  tokenizer_config.json, .jinja) it is the model's ``eos_token`` (what llama-cpp-python's and
  transformers' chat paths stop on) plus every turn-closing marker of the published formats that
  the template writes: a template that closes each message with ``<|im_end|>`` taught the model to
  end its own turn with it, and some models' ``eos_token`` is the end of the *text* instead
  (``<|end_of_text|>`` while turns end in ``<|eot_id|>``).  Markers the template never writes are
  not added: they are ordinary text to that model.
- BOS: completion endpoints tokenize with the vocabulary's own special tokens (llama.cpp adds BOS
  when ``add_bos_token`` is set, vLLM and TGI tokenize with ``add_special_tokens``), so a BOS the
  template wrote would be doubled.  It is left out when the tokenizer adds one itself, as
  llama.cpp's own chat path does; the tokens are then the ones the chat endpoint would have run.
"""

from __future__ import annotations

from ratatoskr_server.policy.templates.sources import TemplateSource

#: Tokens that close a turn in the published chat formats: ChatML, Llama 3 (and its tool-call
#: end), Phi-3, Gemma, OpenChat.
TURN_END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>")


def end_of_turn(source: TemplateSource) -> tuple[str, ...]:
    """The stop strings that end the model's turn when its prompt went through ``source``'s template."""
    if source.turn_end is not None:
        return source.turn_end
    found: list[str] = []
    eos = source.special_tokens.get("eos_token", "")
    if eos:
        found.append(eos)
    for marker in TURN_END_MARKERS:
        if any(marker in text for text in source.variants.values()):
            found.append(marker)
    return tuple(dict.fromkeys(found))


def completion_prompt(source: TemplateSource, rendered: str) -> str:
    """``rendered`` as a completion endpoint should receive it: without a leading BOS its tokenizer adds."""
    bos = source.special_tokens.get("bos_token", "")
    if source.adds_bos and bos and rendered.startswith(bos):
        return rendered[len(bos) :]
    return rendered
