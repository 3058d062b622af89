"""The redaction sweep: secrets configured everywhere, every RPC driven (failures too), and none of
them found in the log, the metrics, the exported traces, the error messages or the files written.

Secrets: a provider's API key (its upstream echoes it back in errors, answers and model ids), a
credential-named extra header, a credential-named query parameter, user:password in a base URL,
the collector's token for trace export, and caller keys (tokens, stored lines, digests).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ratatoskr_client import ServiceClient
from ratatoskr_client.errors import RatatoskrError
from ratatoskr_client.types import ChatOptions, Message
from ratatoskr_server.config import append_secret
from ratatoskr_server.keys import new_token
from tests.conftest import MODEL, TINY_NLI, DaemonProcess, short_dir
from tests.otlp_receiver import Receiver, otlp_receiver
from tests.upstreams import openai_double
from tests.upstreams.harness import Upstream, serve

HI = [Message("user", "hi")]
ECHO = openai_double.ECHO_HEADER


def _secret(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


PROVIDER_KEY = _secret("sk-sweep-provider")
HEADER_SECRET = _secret("header-secret")
QUERY_SECRET = _secret("query-secret")
URL_PASSWORD = _secret("urlpass")
OTLP_TOKEN = _secret("otlp-token")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with otlp_receiver() as r:
        yield r


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as up:
        yield up


class Sweep:
    def __init__(self) -> None:
        self.dir = short_dir()
        self.secrets_file = self.dir / "secrets.toml"
        self.token, stored = new_token()
        append_secret(self.secrets_file, "KEY_SWEEPER", str(stored))
        self.stored = str(stored)
        self.errors: list[str] = []

    def values(self) -> dict[str, str]:
        return {
            "provider key": PROVIDER_KEY,
            "header secret": HEADER_SECRET,
            "query secret": QUERY_SECRET,
            "url password": URL_PASSWORD,
            "collector token": OTLP_TOKEN,
            "caller token": self.token,
            "stored key line": self.stored,
            "stored digest": self.stored.rsplit(":", 1)[1],
        }

    def attempt(self, step: Callable[[], Any]) -> Any:
        """Run one call; a domain error's message is kept for the sweep."""
        try:
            return step()
        except RatatoskrError as err:
            self.errors.append(f"{err.code} {err.message} {err!r}")
            return None


@pytest.fixture(scope="module")
def sweep() -> Sweep:
    return Sweep()


@pytest.fixture(scope="module")
def swept(model_root: Path, upstream: Upstream, receiver: Receiver, sweep: Sweep) -> Iterator[DaemonProcess]:
    host = upstream.base_url.removeprefix("http://")
    d = DaemonProcess(
        model_root,
        secrets_file=str(sweep.secrets_file),
        server={"socket_require_auth": True},
        logging={"format": "json", "level": "DEBUG"},
        resilience={"attempts": 1},
        http_front={"enabled": True, "port": 0},
        tracing={
            "enabled": True,
            "endpoint": receiver.endpoint,
            "schedule_delay_ms": 20,
            "headers": {"authorization": f"Bearer {OTLP_TOKEN}"},
        },
        budget={
            "ledger_path": str(sweep.dir / "budget.sqlite3"),
            "daily_usd": "1",
            "prices": {"*": {"input_per_million": "1", "output_per_million": "2"}},
        },
        registry={"cache_file": str(sweep.dir / "registry.json")},
        local={"preload": [MODEL, TINY_NLI]},
        callers={"sweeper": {"key_hash": "${KEY_SWEEPER}", "scopes": ["chat", "embed", "nli", "classify", "admin"]}},
        providers={
            # Its upstream echoes the key it was sent in errors, answers and model ids.
            "openai": {
                "kind": "openai_compat",
                "base_url": f"{upstream.base_url}/v1",
                "api_key": PROVIDER_KEY,
                "headers": {ECHO: "error,answer,models", "X-Api-Key": HEADER_SECRET},
                "query": {"api_key": QUERY_SECRET},
                "models": ["gpt-test"],
            },
            "creds": {"kind": "openai_compat", "base_url": f"http://sweeper:{URL_PASSWORD}@{host}/v1"},
        },
    ).start()
    yield d
    d.stop()


def _drive_grpc(d: DaemonProcess, sweep: Sweep) -> None:
    with ServiceClient(d.socket, timeout=60, api_key=sweep.token) as c:
        go = sweep.attempt
        go(lambda: c.embed(["one text", "two texts"], model=MODEL))
        go(lambda: c.embed(["x"], model="openai/text-embedding-3-small"))
        go(lambda: c.nli([("a cat sleeps", "an animal rests")], model=TINY_NLI))
        go(lambda: c.classify("the stock fell", ["finance", "sports"], model=TINY_NLI))
        go(lambda: c.tokenize("hello world", model=MODEL))
        go(lambda: c.count_tokens(["hello", "world"], model=MODEL))
        go(lambda: c.count_tokens(["hello"], model="openai/gpt-test"))
        go(lambda: c.render_chat_template(HI, model="openai/gpt-test"))
        for model in ("openai/gpt-test", "openai/auth", "openai/bad-request", "openai/midstream-error", "creds/m"):
            go(lambda model=model: c.chat(HI, ChatOptions(model=model)))
            go(lambda model=model: list(c.chat_stream(HI, ChatOptions(model=model))))
        go(lambda: c.generate("Once", ChatOptions(model="openai/gpt-test")))
        go(lambda: list(c.generate_stream("Once", ChatOptions(model="openai/gpt-test"))))
        go(lambda: c.chat(HI, ChatOptions(model="nowhere/none")))
        go(lambda: c.list_models())
        go(lambda: c.model_metadata("openai/gpt-test"))
        go(lambda: c.model_metadata("openai/auth"))
        go(lambda: c.status())
        go(lambda: c.reload())
        go(lambda: c.list_loaded_models())
        go(lambda: c.load_model(MODEL))
        go(lambda: c.unload_model("no-such-model"))
        go(lambda: c.get_budget())
    with ServiceClient(d.socket, timeout=10, api_key=sweep.token + "x") as wrong:
        sweep.attempt(lambda: wrong.embed(["refused"], model=MODEL))
    with ServiceClient(d.socket, timeout=10, api_key="") as nobody:
        sweep.attempt(lambda: nobody.status())


def _drive_http(d: DaemonProcess, sweep: Sweep) -> None:
    [url] = [a for r in d.records() if r.get("msg") == "listening" for a in r["listen"] if a.startswith("http")]
    for token in (sweep.token, sweep.token[:-1], PROVIDER_KEY):
        headers = {"Authorization": f"Bearer {token}"}
        for model in ("openai/gpt-test", "openai/auth"):
            for stream in (False, True):
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
                answer = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)
                if answer.status_code >= 400:
                    sweep.errors.append(answer.text)
        answer = httpx.post(f"{url}/v1/embeddings", json={"model": MODEL, "input": "x"}, headers=headers, timeout=30)
        if answer.status_code >= 400:
            sweep.errors.append(answer.text)


def _files_written(d: DaemonProcess, sweep: Sweep) -> dict[str, bytes]:
    """What the daemon wrote (its log, ledger, registry cache): the config and secrets file are ours."""
    ours = {d.config_path, sweep.secrets_file}
    found = {}
    for root in {d.dir, sweep.dir}:
        for path in root.rglob("*"):
            if path.is_file() and path not in ours:
                found[str(path)] = path.read_bytes()
    return found


def test_no_secret_reaches_any_output(
    swept: DaemonProcess, receiver: Receiver, upstream: Upstream, sweep: Sweep
) -> None:
    _drive_grpc(swept, sweep)
    _drive_http(swept, sweep)
    # The sweep saw real traffic: failures with messages, spans exported, request lines logged.
    assert len(sweep.errors) >= 10
    receiver.wait_for(lambda spans: sum(1 for s in spans if s.kind == 2) >= 30)
    metrics = httpx.get(swept.metrics_url(), timeout=10).text
    assert "ratatoskr_model_calls_total" in metrics
    swept.stop()  # the log and the ledger complete
    log = swept.log()
    assert sum(1 for r in swept.records() if r.get("msg") == "request") >= 30
    outputs: dict[str, bytes] = {
        "log": log.encode(),
        "metrics": metrics.encode(),
        "exported spans": b"".join(receiver.raw),
        "error messages": "\n".join(sweep.errors).encode(),
        **_files_written(swept, sweep),
    }
    leaks = [
        f"{what} in {where}"
        for what, secret in sweep.values().items()
        for where, text in outputs.items()
        if secret.encode() in text
    ]
    assert leaks == []
    # The secrets were live, not dead configuration: each reached the one place it is meant for.
    sent = upstream.requests
    assert any(r.headers.get("Authorization") == f"Bearer {PROVIDER_KEY}" for r in sent)
    assert any(r.headers.get("X-Api-Key") == HEADER_SECRET and r.query.get("api_key") == QUERY_SECRET for r in sent)
    assert any(r.headers.get("Authorization", "").startswith("Basic ") for r in sent)  # creds/m: user:password
    assert any(r.headers.get("Authorization") == f"Bearer {OTLP_TOKEN}" for r in receiver.upstream.requests)
