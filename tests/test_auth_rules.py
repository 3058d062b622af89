"""The rules behind caller keys, without a daemon: key format, the guard's decisions, sliding-window
rates on a fake clock, what preflight says of TCP, and the socket directory check."""

from __future__ import annotations

import asyncio
import os

import pytest

from ratatoskr_client._proto.ratatoskr.v1 import gateway_pb2, types_pb2
from ratatoskr_client.errors import FailedPrecondition, PermissionDenied, ResourceExhausted, Unauthenticated
from ratatoskr_client.paths import grpc_target, unsafe_socket_directory
from ratatoskr_client.types import PrivacyTier
from ratatoskr_server.config import ConfigError, Settings, load_settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.daemon import DaemonError, prepare_socket_path
from ratatoskr_server.fronts.grpc.auth import SCOPE_BY_RPC, Guard, usage_tokens
from ratatoskr_server.keys import KeyRing, new_token, parse_stored
from ratatoskr_server.preflight import Level, check_settings
from ratatoskr_server.redact import scrub
from ratatoskr_server.state.rates import MemoryRates
from tests.conftest import short_dir

TCP = "ipv4:10.0.0.7:51234"
UNIX = "unix:/run/ratatoskr/ratatoskr.sock"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _settings(**server: object) -> tuple[Settings, dict[str, str]]:
    tokens: dict[str, str] = {}
    callers: dict[str, dict[str, object]] = {}
    for name, scopes, extra in (
        ("app", ["chat", "embed"], {"privacy_ceiling": "sovereign", "budget_scope": "team-a", "rpm": 3}),
        ("root", ["admin"], {}),
        ("gone", ["chat"], {"enabled": False}),
    ):
        token, stored = new_token()
        tokens[name] = token
        callers[name] = {"key_hash": str(stored), "scopes": scopes, **extra}
    settings = load_settings(local={"preload": []}, server=server, callers=callers)
    return settings, tokens


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_tokens_match_only_themselves() -> None:
    token, stored = new_token()
    assert token.startswith(f"rtk_{stored.key_id}_") and len(token) == 4 + 12 + 1 + 43
    assert parse_stored(str(stored)) == stored
    ring = KeyRing({"a": stored})
    assert ring.match(token) == "a"
    assert ring.match(token[:-1] + ("x" if token[-1] != "x" else "y")) is None
    other, _ = new_token()
    assert ring.match(other) is None and ring.match("") is None and ring.match(f"rtk_{stored.key_id}_") is None


def test_the_scope_table_names_every_rpc() -> None:
    gateway = {m.name for m in gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].methods}
    from ratatoskr_client._proto.ratatoskr.v1 import admin_pb2

    admin = {m.name for m in admin_pb2.DESCRIPTOR.services_by_name["Admin"].methods}
    assert gateway | admin == set(SCOPE_BY_RPC)
    assert all(SCOPE_BY_RPC[name] == "admin" for name in admin)


def test_the_guard_decides_by_transport_key_and_scope() -> None:
    settings, tokens = _settings()
    guard = Guard(settings)
    assert guard.authenticate("Chat", UNIX, []) is None  # the socket: anonymous allowed
    assert guard.authenticate("Reload", UNIX, []) is None
    with pytest.raises(Unauthenticated, match="Chat over TCP needs an API key"):
        guard.authenticate("Chat", TCP, [])
    with pytest.raises(Unauthenticated):
        guard.authenticate("Chat", TCP, [("authorization", tokens["app"])])  # not "Bearer …"
    with pytest.raises(Unauthenticated):
        guard.authenticate("Chat", UNIX, _bearer(tokens["gone"]))  # a disabled key is no key
    caller = guard.authenticate("Chat", TCP, [("authorization", f"bearer {tokens['app']}")])
    assert caller is not None and caller.name == "app"
    with pytest.raises(PermissionDenied, match="caller 'app' lacks the 'nli' scope needed by Nli"):
        guard.authenticate("Nli", TCP, _bearer(tokens["app"]))
    with pytest.raises(PermissionDenied, match="'admin' scope needed by Status"):
        guard.authenticate("Status", TCP, _bearer(tokens["app"]))
    assert guard.authenticate("Status", UNIX, _bearer(tokens["app"])) is not None
    assert guard.authenticate("Status", TCP, _bearer(tokens["root"])) is not None
    assert guard.authenticate("ListModels", TCP, _bearer(tokens["root"])) is not None  # any valid key
    with pytest.raises(PermissionDenied, match="'admin' scope needed by SomeNewRpc"):
        guard.authenticate("SomeNewRpc", TCP, _bearer(tokens["app"]))  # unknown RPCs fail closed


def test_auth_settings_change_who_needs_a_key() -> None:
    settings, tokens = _settings(tcp_require_auth=False, socket_require_auth=True)
    guard = Guard(settings)
    assert guard.authenticate("Status", TCP, []) is None  # auth off: anonymous gets everything
    with pytest.raises(Unauthenticated, match="over the Unix socket needs an API key"):
        guard.authenticate("Chat", UNIX, [])
    with pytest.raises(PermissionDenied):
        guard.authenticate("Status", TCP, _bearer(tokens["app"]))  # a key sent still has only its scopes


async def test_an_admitted_caller_is_on_the_context_and_counted() -> None:
    settings, tokens = _settings()
    clock = FakeClock()
    guard = Guard(settings, MemoryRates(clock))
    contexts = [RequestContext.start() for _ in range(5)]
    outcomes = await asyncio.gather(
        *(guard.admit("Embed", TCP, _bearer(tokens["app"]), ctx) for ctx in contexts), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, ResourceExhausted)]
    assert len(refused) == 2 and refused[0].retry_after_s == 60
    ctx = contexts[0]
    assert (ctx.caller, ctx.budget_scope, ctx.privacy_tier) == ("app", "team-a", PrivacyTier.SOVEREIGN)
    root = RequestContext.start()
    assert await guard.admit("Status", TCP, _bearer(tokens["root"]), root) is not None
    assert (root.caller, root.budget_scope, root.privacy_tier) == ("root", "", None)  # "": its own budget
    anonymous = RequestContext.start()
    assert await guard.admit("Embed", UNIX, [], anonymous) is None and anonymous.caller == ""
    clock.now += 60
    assert await guard.admit("Embed", TCP, _bearer(tokens["app"]), RequestContext.start()) is not None


async def test_rpm_slides_and_is_exact_under_concurrency() -> None:
    clock = FakeClock()
    rates = MemoryRates(clock)
    results = await asyncio.gather(*(rates.admit("k", rpm=10, tpm=None) for _ in range(25)))
    assert sum(r is None for r in results) == 10
    assert {(r.limit, r.retry_after_s) for r in results if r is not None} == {("rpm", 60.0)}
    clock.now += 30
    refused = await rates.admit("k", rpm=10, tpm=None)
    assert refused is not None and refused.retry_after_s == 30
    clock.now += 30  # the first ten leave the window
    assert await rates.admit("k", rpm=10, tpm=None) is None
    assert await rates.admit("other", rpm=10, tpm=None) is None  # windows are per key


async def test_tpm_admits_while_under_the_limit_and_says_when_it_will_be_again() -> None:
    clock = FakeClock()
    rates = MemoryRates(clock)
    assert await rates.admit("k", rpm=None, tpm=100) is None
    await rates.record_tokens("k", 60)
    clock.now += 10
    assert await rates.admit("k", rpm=None, tpm=100) is None  # 60 < 100
    await rates.record_tokens("k", 70)  # 130: over
    clock.now += 10
    refused = await rates.admit("k", rpm=None, tpm=100)
    assert refused is not None and refused.limit == "tpm"
    assert refused.retry_after_s == 40  # when the first 60 leave, 70 < 100
    clock.now += 40
    assert await rates.admit("k", rpm=None, tpm=100) is None


def test_usage_tokens_of_responses_and_stream_events() -> None:
    usage = types_pb2.Usage(prompt_tokens=12, completion_tokens=7, total_tokens=19)
    assert usage_tokens(gateway_pb2.ChatResponse(usage=usage)) == 19
    assert usage_tokens(types_pb2.ChatEvent(usage=types_pb2.Usage(prompt_tokens=3, completion_tokens=2))) == 5
    assert usage_tokens(types_pb2.ChatEvent()) == 0
    assert usage_tokens(gateway_pb2.TokenizeResponse()) == 0  # no usage field at all


def test_key_hashes_must_be_well_formed_and_are_masked() -> None:
    with pytest.raises(ConfigError, match=r"callers\.a\.key_hash: .*ratatoskr keys create"):
        load_settings(callers={"a": {"key_hash": "sha256:not-a-digest", "scopes": ["chat"]}})
    unset = load_settings(local={"preload": []}, callers={"a": {"key_hash": ""}})  # an unset ${VAR}
    assert len(Guard(unset).keys) == 0
    for serving, level in ((True, Level.ERROR), (False, Level.WARNING)):
        (finding,) = [f for f in check_settings(unset, serving=serving) if f.key == "callers.a.key_hash"]
        assert finding.level is level and "unset ${VAR}" in finding.message
    settings, _ = _settings()
    stored = settings.callers["app"].key_hash.get_secret_value()
    assert stored not in str(settings.masked())
    digest = stored.rsplit(":", 1)[1]
    assert scrub(f"hash {stored} / {digest}", settings.secret_values()) == "hash ******** / ********"
    token, _ = new_token()
    assert token not in scrub(f"got {token}")  # key-shaped, masked even when unknown


def test_preflight_refuses_tcp_without_keys_and_warns_loudly_without_auth() -> None:
    base: dict[str, object] = {"tcp_enabled": True}
    no_keys = load_settings(local={"preload": []}, server=base)
    (finding,) = [f for f in check_settings(no_keys) if f.key == "server.tcp_require_auth"]
    assert finding.level is Level.ERROR and "ratatoskr keys create" in finding.message
    open_lan = load_settings(local={"preload": []}, server={**base, "tcp_host": "0.0.0.0", "tcp_require_auth": False})
    (warning,) = [f for f in check_settings(open_lan) if f.key == "server.tcp_require_auth"]
    assert warning.level is Level.WARNING and "WITHOUT API KEYS" in warning.message
    loopback = load_settings(local={"preload": []}, server={**base, "tcp_require_auth": False})
    assert not [f for f in check_settings(loopback) if f.key.startswith("server.")]
    settings, _ = _settings(tcp_enabled=True, tcp_host="0.0.0.0")
    (clear,) = [f for f in check_settings(settings) if f.key.startswith("server.")]
    assert clear.key == "server.tls_cert_file" and clear.level is Level.WARNING


def test_tls_settings_come_in_pairs() -> None:
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file go together"):
        load_settings(server={"tls_cert_file": "/x.pem"})
    with pytest.raises(ConfigError, match="tls_client_ca_file"):
        load_settings(server={"tls_client_ca_file": "/ca.pem"})


def test_a_socket_directory_others_can_write_is_refused_by_name() -> None:
    shared = short_dir() / "ratatoskr"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)  # as another user would pre-create it
    with pytest.raises(DaemonError, match=f"refusing the socket directory {shared}: .* mode 0777"):
        prepare_socket_path(shared / "ratatoskr.sock")
    os.chmod(shared, 0o750)
    prepare_socket_path(shared / "ratatoskr.sock")  # group may read and search, not write
    created = short_dir() / "fresh" / "run"
    prepare_socket_path(created / "r.sock")
    assert unsafe_socket_directory(created) is None and (created.stat().st_mode & 0o777) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_socket_directory_of_another_user_is_refused() -> None:
    theirs = short_dir() / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(DaemonError, match=f"{theirs} belongs to uid 65534"):
        prepare_socket_path(theirs / "ratatoskr.sock")


def test_the_client_refuses_a_default_socket_directory_in_tmp_it_does_not_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tmp = short_dir()
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("RATATOSKR_SERVER__SOCKET_PATH", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    trap = tmp / f"ratatoskr-{os.getuid()}"
    assert grpc_target(None) == f"unix:{trap}/ratatoskr.sock"  # absent: fine, the daemon makes it
    trap.mkdir()
    os.chmod(trap, 0o777)
    with pytest.raises(FailedPrecondition, match=f"refusing the default socket {trap}/ratatoskr.sock: .*0777"):
        grpc_target(None)
