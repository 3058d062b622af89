"""Built-in chat templates for the common model families, and which family a model name suggests.

Each is a Jinja template run by the same engine as a model's own, written from the family's
published prompt format (model cards and the reference implementations).  Two fixes over the
reference design: Mistral wraps *every* user turn in ``[INST] … [/INST]``, not only the first, and
Llama 2 puts the system prompt inside the first turn's ``<<SYS>>`` block as Meta's code does.
Families without a system role (Mistral, Gemma) prepend it to the first user turn.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_ALTERNATE = (
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('this template needs user and assistant turns to alternate, starting with the user') }}"
    "{% endif %}"
)
# messages without a leading system message, and that message's text ('' when there is none)
_SPLIT_SYSTEM = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
)


@dataclass(frozen=True, slots=True)
class Builtin:
    name: str
    template: str
    special_tokens: Mapping[str, str]
    #: Where the model's turn ends: the stop sequences for raw-prompt backends.
    end_of_turn: tuple[str, ...]


BUILTINS: dict[str, Builtin] = {
    "llama2": Builtin(
        "llama2",
        _SPLIT_SYSTEM + "{% for message in turns %}" + _ALTERNATE + "{% if message['role'] == 'user' %}"
        "{% if loop.first and system %}"
        "{% set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}"
        "{% else %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}",
        {"bos_token": "<s>", "eos_token": "</s>"},
        ("</s>",),
    ),
    "mistral": Builtin(
        "mistral",
        _SPLIT_SYSTEM + "{{ bos_token }}{% for message in turns %}" + _ALTERNATE + "{% if message['role'] == 'user' %}"
        "{% if loop.first and system %}{% set content = system + '\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{{ '[INST] ' + content + ' [/INST]' }}"
        "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}",
        {"bos_token": "<s>", "eos_token": "</s>"},
        ("</s>",),
    ),
    "chatml": Builtin(
        "chatml",
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        {"eos_token": "<|im_end|>"},
        ("<|im_end|>",),
    ),
    "llama3": Builtin(
        "llama3",
        "{{ bos_token }}{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
        "{{ message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        ("<|eot_id|>",),
    ),
    "gemma": Builtin(
        "gemma",
        _SPLIT_SYSTEM
        + "{{ bos_token }}{% for message in turns %}"
        + _ALTERNATE
        + "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
        "{% if loop.first and system %}{% set content = system + '\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{{ '<start_of_turn>' + role + '\\n' + content | trim + '<end_of_turn>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
        {"bos_token": "<bos>", "eos_token": "<eos>"},
        ("<end_of_turn>",),
    ),
    "phi3": Builtin(
        "phi3",
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}",
        {"bos_token": "<s>", "eos_token": "<|endoftext|>"},
        ("<|end|>", "<|endoftext|>"),
    ),
    "alpaca": Builtin(
        "alpaca",
        _SPLIT_SYSTEM + "{{ (system or 'Below is an instruction that describes a task. Write a response that "
        "appropriately completes the request.') + '\\n\\n' }}{% for message in turns %}"
        "{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
        "{% else %}{{ '### Response:\\n' + message['content'] + '\\n\\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}",
        {},
        ("### Instruction:",),
    ),
    "vicuna": Builtin(
        "vicuna",
        _SPLIT_SYSTEM + "{{ (system or 'A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user\\'s questions.') + ' ' }}"
        "{% for message in turns %}{% if message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
        "{% else %}{{ 'ASSISTANT: ' + message['content'] + eos_token }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}",
        {"eos_token": "</s>"},
        ("</s>", "USER:"),
    ),
    "raw": Builtin(
        "raw",
        "{% for message in messages %}{{ message['content'] }}{% if not loop.last %}{{ '\\n' }}{% endif %}{% endfor %}",
        {},
        (),
    ),
}

#: Model-name patterns and the family each suggests, most specific first ("llama-3" before "llama").
_DETECT: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), family)
    for pattern, family in (
        (r"llama-?3", "llama3"),
        (r"llama-?2.*chat|llama-?2", "llama2"),
        (r"mistral|mixtral", "mistral"),
        (r"gemma", "gemma"),
        (r"phi-?3", "phi3"),
        (r"qwen|smollm|hermes|chatml|yi-", "chatml"),
        (r"vicuna", "vicuna"),
        (r"alpaca", "alpaca"),
    )
)


#: The registry's tokenizer families (``ModelRecord.tokenizer_family``) whose chat format is a built-in.
FAMILY_TEMPLATES: dict[str, str] = {
    "llama2": "llama2",
    "llama3": "llama3",
    "mistral": "mistral",
    "gemma": "gemma",
    "phi3": "phi3",
    "qwen2": "chatml",
    "smollm2": "chatml",
}


def detect(model: str) -> str | None:
    """The built-in family a model's name suggests (``llama-2-7b-chat`` → ``llama2``), if any."""
    name = model.lower().rsplit("/", 1)[-1]
    for pattern, family in _DETECT:
        if pattern.search(name):
            return family
    return None
