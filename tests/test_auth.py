"""Callers who must prove who they are: keys over TCP, TLS and mutual TLS, the Unix socket, scopes,
per-key rates, and keys absent from every log line, metric and error (issue 11, part 3)."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import signal
import stat
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ratatoskr_client import AsyncServiceClient, ServiceClient
from ratatoskr_client.errors import PermissionDenied, RatatoskrError, ResourceExhausted, Unauthenticated, Unavailable
from ratatoskr_client.types import ChatOptions, Message
from ratatoskr_server.config import append_secret
from ratatoskr_server.keys import new_token
from tests.certs import Pki, make_pki
from tests.conftest import MODEL, DaemonProcess, run_ratatoskr, short_dir
from tests.upstreams import openai_double
from tests.upstreams.harness import Upstream, serve

#: name -> (scopes, extra settings); "ops" is made by `ratatoskr keys create`, the others in process.
KEYS: dict[str, tuple[list[str], dict[str, object]]] = {
    "embedder": (["embed"], {}),
    "chatter": (["chat"], {"tpm": 30, "budget_scope": "team-a"}),
    "limited": (["embed"], {"rpm": 5}),
}
HI = [Message("user", "hi")]


class Keyring:
    def __init__(self, directory: Path) -> None:
        self.secrets_file = directory / "secrets.toml"
        self.tokens: dict[str, str] = {}
        self.stored: list[str] = []
        self.callers: dict[str, dict[str, object]] = {}

    def create_with_cli(self, name: str, scopes: str) -> None:
        run = run_ratatoskr(
            "keys", "create", name, "--scopes", scopes, "--secrets-file", str(self.secrets_file), "--json"
        )
        assert run.returncode == 0, run.stderr
        out = json.loads(run.stdout)
        self.tokens[name] = out["token"]
        table = out["config"].splitlines()
        assert table[0] == f"[callers.{name}]"
        self.callers[name] = {k: json.loads(v) for k, v in (line.split(" = ", 1) for line in table[1:])}

    def create(self, name: str, scopes: list[str], extra: dict[str, object]) -> None:
        token, stored = new_token()
        variable = f"KEY_{name.upper()}"
        append_secret(self.secrets_file, variable, str(stored))
        self.tokens[name] = token
        self.callers[name] = {"key_hash": f"${{{variable}}}", "scopes": scopes, **extra}

    def secrets(self) -> list[str]:
        """Every token, and every line and digest the secrets file holds: none may leak anywhere."""
        lines = [line.split(" = ", 1)[1].strip('"') for line in self.secrets_file.read_text().splitlines()]
        return [*self.tokens.values(), *lines, *(line.rsplit(":", 1)[1] for line in lines)]


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    ring = Keyring(short_dir())
    ring.create_with_cli("ops", "chat,embed,admin")
    for name, (scopes, extra) in KEYS.items():
        ring.create(name, scopes, extra)
    assert stat.S_IMODE(ring.secrets_file.stat().st_mode) == 0o600
    return ring


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as up:
        yield up


def _daemon(model_root: Path, keyring: Keyring, upstream: Upstream, **server: object) -> DaemonProcess:
    group = grp.getgrgid(os.getgid()).gr_name
    return DaemonProcess(
        model_root,
        secrets_file=keyring.secrets_file,
        server={"tcp_require_auth": True, "socket_group": group, "socket_mode": "0660", **server},
        callers=keyring.callers,
        providers={"up": {"kind": "openai_compat", "base_url": f"{upstream.base_url}/v1", "local": True}},
    )


@pytest.fixture(scope="module")
def authd(model_root: Path, keyring: Keyring, upstream: Upstream) -> Iterator[DaemonProcess]:
    d = _daemon(model_root, keyring, upstream).start()
    yield d
    d.stop()


def test_keys_create_prints_the_token_once_and_stores_only_its_hash(keyring: Keyring) -> None:
    text = keyring.secrets_file.read_text()
    assert keyring.tokens["ops"] not in text
    assert text.count("sha256:") == 1 + len(KEYS)
    run = run_ratatoskr("keys", "create", "ops", "--secrets-file", str(keyring.secrets_file))
    assert run.returncode == 2 and "already has RATATOSKR_CALLER_OPS" in run.stderr  # never silently replaced


def test_tcp_without_a_key_is_unauthenticated_but_health_stays_open(authd: DaemonProcess) -> None:
    with ServiceClient(authd.tcp_address(), timeout=10) as client:
        assert client.health() == "SERVING"
        for call in (lambda: client.embed(["x"]), client.list_models, client.status):
            with pytest.raises(Unauthenticated, match="needs an API key"):
                call()


def test_wrong_keys_are_unauthenticated_on_tcp_and_on_the_socket(authd: DaemonProcess, keyring: Keyring) -> None:
    ops = keyring.tokens["ops"]
    wrong_secret = ops[:-1] + ("A" if ops[-1] != "A" else "B")
    unknown, _ = new_token()
    for address in (authd.tcp_address(), authd.socket):
        for token in (wrong_secret, unknown, "not-a-key", "rtk_"):
            with ServiceClient(address, timeout=10, api_key=token) as client, pytest.raises(Unauthenticated) as info:
                client.embed(["x"])
            assert info.value.message == "the API key is not valid (unknown, malformed or revoked)"


def test_a_key_without_the_scope_is_permission_denied(authd: DaemonProcess, keyring: Keyring) -> None:
    tcp = authd.tcp_address()
    with ServiceClient(tcp, timeout=10, api_key=keyring.tokens["embedder"]) as embedder:
        assert len(embedder.embed(["allowed"]).vectors) == 1
        assert embedder.list_models()  # any valid key
        with pytest.raises(PermissionDenied, match="caller 'embedder' lacks the 'nli' scope needed by Nli"):
            embedder.nli([("a", "b")])
        with pytest.raises(PermissionDenied, match="lacks the 'chat' scope needed by ChatStream"):
            list(embedder.chat_stream(HI, ChatOptions(model="up/gpt-test")))
        with pytest.raises(PermissionDenied, match="lacks the 'admin' scope needed by Status"):
            embedder.status()
    with ServiceClient(authd.socket, timeout=10, api_key=keyring.tokens["embedder"]) as local:
        assert local.status().state == "serving"  # Admin on the socket: reaching it is enough
        with pytest.raises(PermissionDenied):
            local.nli([("a", "b")])  # a key sent on the socket still has only its scopes


def test_the_right_key_over_tcp_and_no_key_on_the_socket(authd: DaemonProcess, keyring: Keyring) -> None:
    with ServiceClient(authd.tcp_address(), timeout=10, api_key=keyring.tokens["ops"]) as ops:
        via_tcp = ops.embed(["same vectors"])
        assert ops.status().state == "serving"  # the admin scope over TCP
    with authd.client(timeout=10) as local:
        assert local.embed(["same vectors"]).vectors == via_tcp.vectors
    records = [r for r in authd.records() if r.get("msg") == "request" and r.get("rpc") == "Status"]
    assert any(r.get("caller") == "ops" for r in records)


def test_the_socket_has_its_group_and_mode(authd: DaemonProcess) -> None:
    info = authd.socket.stat()
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == os.getgid()


async def test_rpm_is_exact_under_concurrency(authd: DaemonProcess, keyring: Keyring) -> None:
    async with AsyncServiceClient(authd.tcp_address(), timeout=10, api_key=keyring.tokens["limited"]) as client:
        outcomes = await asyncio.gather(*(client.embed([f"call {i}"]) for i in range(12)), return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(outcomes) - len(refused) == 5
    assert len(refused) == 7 and all(isinstance(o, ResourceExhausted) for o in refused)
    for err in refused:
        assert isinstance(err, ResourceExhausted)
        assert "caller 'limited' is at its limit of 5 calls per minute (rpm)" in err.message
        assert err.retry_after_s is not None and 50 < err.retry_after_s <= 60


def test_tpm_counts_the_tokens_calls_report(authd: DaemonProcess, keyring: Keyring) -> None:
    total = int(openai_double.USAGE["total_tokens"])  # type: ignore[call-overload]
    assert total < 30 <= 2 * total  # the second call is admitted (19 < 30) and takes the window over
    with ServiceClient(authd.tcp_address(), timeout=10, api_key=keyring.tokens["chatter"]) as chatter:
        for _ in range(2):
            assert chatter.chat(HI, ChatOptions(model="up/gpt-test")).usage.total_tokens == total
        with pytest.raises(ResourceExhausted, match=r"limit of 30 tokens per minute \(tpm\)") as info:
            chatter.chat(HI, ChatOptions(model="up/gpt-test"))
    assert info.value.retry_after_s is not None and 0 < info.value.retry_after_s <= 60


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki(short_dir() / "pki")


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_keys_over_tls_and_mutual_tls(
    model_root: Path, keyring: Keyring, upstream: Upstream, pki: Pki, mutual: bool
) -> None:
    tls: dict[str, object] = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}
    if mutual:
        tls["tls_client_ca_file"] = pki.ca_cert
    d = _daemon(model_root, keyring, upstream, **tls).start()
    try:
        address = d.tcp_address()
        client_pair = {"client_cert": pki.client_cert, "client_key": pki.client_key} if mutual else {}
        secure: dict[str, Path] = {"root_certificates": pki.ca_cert, **client_pair}
        ops_key = keyring.tokens["ops"]
        with ServiceClient(address, timeout=10, api_key=ops_key, **secure) as ops:
            assert len(ops.embed(["over tls"]).vectors[0]) == 384
        anonymous = ServiceClient(address, timeout=10, **secure)
        with anonymous, pytest.raises(Unauthenticated):
            anonymous.embed(["no key, even over tls"])
        with ServiceClient(address, timeout=5, api_key=ops_key) as plaintext, pytest.raises(Unavailable):
            plaintext.embed(["plaintext to a TLS port"])
        if mutual:
            no_cert = ServiceClient(address, timeout=5, api_key=ops_key, root_certificates=pki.ca_cert)
            with no_cert, pytest.raises(Unavailable):
                no_cert.embed(["no client certificate"])
        with d.client(timeout=10) as local:
            assert local.embed(["the socket stays plain"]).model == MODEL
    finally:
        d.stop()
    assert pki.server_key.read_text() not in d.log()


def test_keys_never_reach_logs_metrics_errors_or_config_check(authd: DaemonProcess, keyring: Keyring) -> None:
    secrets = keyring.secrets()
    assert len(secrets) >= 4 + 2 * 4  # 4 tokens; 4 stored lines and their digests
    errors: list[str] = []
    for token in keyring.tokens.values():
        for tampered in (token[:-1] + "x", token + "x", token):
            with ServiceClient(authd.tcp_address(), timeout=10, api_key=tampered) as client:
                try:
                    client.nli([("a", "b")])  # unauthenticated, or a scope none of them has
                except RatatoskrError as err:
                    errors.append(f"{err.code} {err.message}")
    assert any(e.startswith("UNAUTHENTICATED") for e in errors) and any(
        e.startswith("PERMISSION_DENIED") for e in errors
    )
    with ServiceClient(authd.tcp_address(), timeout=10, api_key=keyring.tokens["embedder"]) as embedder:
        embedder.embed(["a call the log names its caller for"])  # this test's own, whatever ran before it
    metrics = urllib.request.urlopen(authd.metrics_url(), timeout=10).read().decode()
    check = run_ratatoskr("config", "check", "--config", str(authd.config_path), "--json")
    assert check.returncode == 0, check.stderr
    keys_list = run_ratatoskr("keys", "list", "--config", str(authd.config_path))
    assert keys_list.returncode == 0 and "embedder: rtk_" in keys_list.stdout
    log = authd.log()
    assert '"caller": "embedder"' in log  # the log does name callers, so its silence on keys means something
    for where, text in {
        "log": log,
        "metrics": metrics,
        "errors": "\n".join(errors),
        "config check": check.stdout + check.stderr,
        "keys list": keys_list.stdout,
    }.items():
        for secret in secrets:
            assert secret not in text, f"a key or its hash is in the {where}"


def test_keys_change_on_reload_without_a_restart(model_root: Path, keyring: Keyring, upstream: Upstream) -> None:
    d = _daemon(model_root, keyring, upstream).start()
    try:
        address = d.tcp_address()
        token, stored = new_token()
        append_secret(keyring.secrets_file, "KEY_LATE", str(stored))
        d.config["callers"] = {"late": {"key_hash": "${KEY_LATE}", "scopes": ["embed"]}}  # the others removed
        d.write_config()
        with ServiceClient(address, timeout=10, api_key=token) as late:
            with pytest.raises(Unauthenticated):
                late.embed(["before the reload"])
            d.signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while not any(r.get("msg") == "configuration reloaded" for r in d.records()):
                assert time.monotonic() < deadline, d.log()
                time.sleep(0.05)
            assert len(late.embed(["after the reload"]).vectors) == 1
        with ServiceClient(address, timeout=10, api_key=keyring.tokens["ops"]) as ops, pytest.raises(Unauthenticated):
            ops.embed(["a key removed from the configuration"])
    finally:
        d.stop()
