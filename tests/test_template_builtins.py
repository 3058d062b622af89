"""The built-in template families, against reference strings written from each family's published format."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ratatoskr_client import FailedPrecondition
from ratatoskr_client.types import Message
from ratatoskr_server.config import load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.policy.templates.builtins import BUILTINS, detect
from ratatoskr_server.policy.templates.data import message_data
from ratatoskr_server.policy.templates.engine import ChatTemplate

CONVERSATION = [
    Message("system", "You are terse."),
    Message("user", "Hi"),
    Message("assistant", "Hello!"),
    Message("user", "Capital of France?"),
    Message("assistant", "Paris."),
    Message("user", "And Norway?"),
]

EXPECTED = {
    "llama2": "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST] Hello! </s>"
    "<s>[INST] Capital of France? [/INST] Paris. </s><s>[INST] And Norway? [/INST]",
    # every user turn in [INST], not only the first
    "mistral": "<s>[INST] You are terse.\n\nHi [/INST]Hello!</s>[INST] Capital of France? [/INST]Paris.</s>"
    "[INST] And Norway? [/INST]",
    "chatml": "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n"
    "<|im_start|>assistant\nParis.<|im_end|>\n<|im_start|>user\nAnd Norway?<|im_end|>\n<|im_start|>assistant\n",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nAnd Norway?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma": "<bos><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
    "<start_of_turn>user\nCapital of France?<end_of_turn>\n<start_of_turn>model\nParis.<end_of_turn>\n"
    "<start_of_turn>user\nAnd Norway?<end_of_turn>\n<start_of_turn>model\n",
    "phi3": "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
    "<|user|>\nCapital of France?<|end|>\n<|assistant|>\nParis.<|end|>\n<|user|>\nAnd Norway?<|end|>\n<|assistant|>\n",
    "alpaca": "You are terse.\n\n### Instruction:\nHi\n\n### Response:\nHello!\n\n"
    "### Instruction:\nCapital of France?\n\n### Response:\nParis.\n\n### Instruction:\nAnd Norway?\n\n### Response:\n",
    "vicuna": "You are terse. USER: Hi ASSISTANT: Hello!</s>USER: Capital of France? ASSISTANT: Paris.</s>"
    "USER: And Norway? ASSISTANT:",
    "raw": "You are terse.\nHi\nHello!\nCapital of France?\nParis.\nAnd Norway?",
}


def render(family: str, messages: list[Message], add_generation_prompt: bool = True) -> str:
    builtin = BUILTINS[family]
    template = ChatTemplate(family, builtin.template, dict(builtin.special_tokens))
    return template.render([message_data(m) for m in messages], add_generation_prompt=add_generation_prompt)


def test_every_builtin_has_a_reference() -> None:
    assert set(EXPECTED) == set(BUILTINS)


@pytest.mark.parametrize("family", sorted(BUILTINS))
def test_builtin_matches_the_published_format(family: str) -> None:
    assert render(family, CONVERSATION) == EXPECTED[family]


def test_mistral_wraps_every_user_turn() -> None:
    assert render("mistral", CONVERSATION).count("[INST]") == 3


@pytest.mark.parametrize("family", ["llama2", "mistral", "gemma"])
def test_families_that_need_alternating_turns_say_so(family: str) -> None:
    with pytest.raises(FailedPrecondition, match="alternate"):
        render(family, [Message("user", "a"), Message("user", "b")])


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("ollama/llama-2-7b-chat", "llama2"),
        ("meta-llama/Meta-Llama-3-8B-Instruct", "llama3"),
        ("mistralai/Mistral-7B-Instruct-v0.2", "mistral"),
        ("google/gemma-2b-it", "gemma"),
        ("microsoft/Phi-3-mini-4k-instruct", "phi3"),
        ("Qwen/Qwen2.5-7B-Instruct", "chatml"),
        ("lmsys/vicuna-13b-v1.5", "vicuna"),
        ("openai/gpt-4o", None),
    ],
)
def test_the_family_is_detected_from_the_model_name(model: str, family: str | None) -> None:
    assert detect(model) == family


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[EmbeddedGateway]:
    settings = load_settings(
        local={"model_dir": tmp_path, "preload": [], "auto_import_default": False},
        templates={"sources": {"house/*": "mistral"}},
    )
    gateway = EmbeddedGateway(settings)
    yield gateway
    await gateway.close()


async def test_the_gateway_uses_a_configured_builtin_then_the_detected_family(gw: EmbeddedGateway) -> None:
    configured = await gw.render_chat_template(CONVERSATION, model="house/anything")
    assert configured.template == "builtin:mistral" and configured.text == EXPECTED["mistral"]
    detected = await gw.render_chat_template(CONVERSATION, model="ollama/llama-2-7b-chat")
    assert detected.template == "builtin:llama2" and detected.text == EXPECTED["llama2"]
    with pytest.raises(FailedPrecondition, match="chatml"):  # nothing known: the message lists the built-ins
        await gw.render_chat_template(CONVERSATION, model="openai/gpt-4o")
