"""Privacy tiers physically block egress: proven in a network namespace where nothing can leave.

The outer test re-runs this file under ``unshare --net`` (we are root): inside, only loopback is up,
and 10.9.9.9/32 is added to it as "the outside": an address that is not loopback, so the Sovereign
tier forbids it, yet one this test can listen on and so count every connection and byte the
gateway sends there.  Hostnames reach addresses through an injected resolver (no /etc/hosts), which
is also how the DNS-rebinding case answers loopback first and the outside address next.

Each forbidden case asserts zero connections and zero bytes at the would-be address, and the
Standard control case asserts that the same setup does reach it, so the counter is known to work.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ratatoskr_client.errors import PermissionDenied
from ratatoskr_client.types import ChatOptions, Message, PrivacyTier
from ratatoskr_server.config import Settings, load_settings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.embedded import EmbeddedGateway
from ratatoskr_server.gateway import Gateway
from ratatoskr_server.net.egress import requested_tier

INSIDE = os.environ.get("RATATOSKR_TEST_NETNS") == "1"
OUTSIDE_ADDRESS = "10.9.9.9"
HELLO = [Message(role="user", content="hello")]
_ANSWER = (
    b'{"id":"c1","object":"chat.completion","model":"m","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
)


def test_in_a_network_namespace_with_only_loopback() -> None:
    """Runs the scenarios below inside ``unshare --net``; they are skipped anywhere else."""
    if INSIDE:
        pytest.skip("already inside the namespace")
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare (util-linux) and ip (iproute2)")
    script = (
        f"ip link set lo up && ip addr add {OUTSIDE_ADDRESS}/32 dev lo && "
        f"exec {sys.executable} -m pytest -q -p no:cacheprovider {__file__} -k 'not namespace_with_only_loopback'"
    )
    env = {**os.environ, "RATATOSKR_TEST_NETNS": "1"}
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1], done.stdout[-2000:]


inside = pytest.mark.skipif(not INSIDE, reason="runs inside the network namespace (see the first test)")


@dataclass
class Counter:
    """A TCP server that counts connections and bytes, answering each request with a chat completion."""

    host: str
    connections: int = 0
    bytes: int = 0
    server: asyncio.Server | None = None
    port: int = 0
    peers: list[str] = field(default_factory=list)

    async def start(self, port: int = 0) -> Counter:
        self.server = await asyncio.start_server(self._serve, self.host, port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.bytes += len(head)
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            self.bytes += len(body)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(_ANSWER)}\r\n\r\n".encode()
                + _ANSWER
            )
            await writer.drain()
            extra = await reader.read()  # keep counting until the client closes
            self.bytes += len(extra)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


class Resolver:
    """Hostnames to addresses: a fixed table, or a list of answers given in turn (DNS rebinding)."""

    def __init__(self, table: dict[str, list[Sequence[str]]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append(host)
        answers = self.table[host]
        return answers.pop(0) if len(answers) > 1 else answers[0]


@pytest.fixture
async def outside() -> AsyncIterator[Counter]:
    counter = await Counter(OUTSIDE_ADDRESS).start()
    yield counter
    await counter.close()


@pytest.fixture
async def near() -> AsyncIterator[Counter]:
    counter = await Counter("127.0.0.1").start()
    yield counter
    await counter.close()


def _settings(tmp_path: Path, tier: str, providers: dict[str, Any], **extra: Any) -> Settings:
    return load_settings(
        local={"model_dir": tmp_path, "preload": [], "auto_import_default": False},
        providers={name: {"kind": "openai_compat", "base_url": url} for name, url in providers.items()},
        privacy={"tier": tier, "resolve_cache_s": 0},
        **extra,
    )


def _gateway(settings: Settings, resolver: Resolver, tier: PrivacyTier | None = None) -> EmbeddedGateway:
    return EmbeddedGateway(settings, gateway=Gateway.from_settings(settings, resolver=resolver), privacy_tier=tier)


@inside
async def test_sovereign_refuses_a_host_that_resolves_outside(tmp_path: Path, outside: Counter, near: Counter) -> None:
    resolver = Resolver({"far.test": [[OUTSIDE_ADDRESS]], "near.test": [["127.0.0.1"]]})
    providers = {"far": f"http://far.test:{outside.port}/v1", "near": f"http://near.test:{near.port}/v1"}
    gw = _gateway(_settings(tmp_path, "sovereign", providers), resolver)
    try:
        with pytest.raises(PermissionDenied) as refused:
            await gw.chat(HELLO, ChatOptions(model="far/m"))
        assert "sovereign" in str(refused.value) and "far.test" in str(refused.value)
        with pytest.raises(PermissionDenied):
            await anext(aiter(gw.chat_stream(HELLO, ChatOptions(model="far/m"))))
        assert (outside.connections, outside.bytes) == (0, 0)
        # Loopback is this host: it still answers under Sovereign.
        assert (await gw.chat(HELLO, ChatOptions(model="near/m"))).message.content == "hi"
        assert near.connections == 1 and near.bytes > 0
    finally:
        await gw.gateway.close()


@inside
@pytest.mark.parametrize("engine", ["aiohttp", "httpcore"])
async def test_an_address_literal_is_judged_at_connect_on_either_engine(
    tmp_path: Path, outside: Counter, engine: str
) -> None:
    """aiohttp resolves no literal, so its socket factory is what refuses one; httpcore's backend does."""
    providers = {"far": f"http://{OUTSIDE_ADDRESS}:{outside.port}/v1"}
    gw = _gateway(_settings(tmp_path, "sovereign", providers, http={"engine": engine}), Resolver({}))
    try:
        with pytest.raises(PermissionDenied, match=f"forbids connecting to {OUTSIDE_ADDRESS}"):
            await gw.chat(HELLO, ChatOptions(model="far/m"))
        assert (outside.connections, outside.bytes) == (0, 0)
    finally:
        await gw.gateway.close()


@inside
@pytest.mark.parametrize("global_tier", ["sovereign", "standard"])
async def test_dns_rebinding_is_caught_at_connect(tmp_path: Path, outside: Counter, global_tier: str) -> None:
    """The check before dispatch sees loopback; the connect resolves again, sees the outside, refuses.

    Under a Standard setting with a request asking Sovereign, only the tier the stage hands down to
    the connect (unary and streaming alike) can refuse it.
    """
    lo, out = ["127.0.0.1"], [OUTSIDE_ADDRESS]
    resolver = Resolver({"flip.test": [lo, out, lo, out]})
    settings = _settings(tmp_path, global_tier, {"flip": f"http://flip.test:{outside.port}/v1"})
    gw = _gateway(settings, resolver, PrivacyTier.SOVEREIGN)
    try:
        with pytest.raises(PermissionDenied) as refused:
            await gw.chat(HELLO, ChatOptions(model="flip/m"))
        assert resolver.asked == ["flip.test", "flip.test"]  # once for the stage, once at connect
        assert "sovereign" in str(refused.value) and "flip.test" in str(refused.value)
        assert OUTSIDE_ADDRESS in str(refused.value)
        with pytest.raises(PermissionDenied, match="sovereign"):
            async for _ in gw.chat_stream(HELLO, ChatOptions(model="flip/m")):
                pass
        assert len(resolver.asked) == 4
        assert (outside.connections, outside.bytes) == (0, 0)
    finally:
        await gw.gateway.close()


@inside
async def test_a_request_cannot_loosen_its_tier(tmp_path: Path, outside: Counter) -> None:
    """Standard asked under a Sovereign setting, or under a Sovereign key ceiling, stays Sovereign."""
    resolver = Resolver({"far.test": [[OUTSIDE_ADDRESS]]})
    providers = {"far": f"http://far.test:{outside.port}/v1"}
    gw = _gateway(_settings(tmp_path, "sovereign", providers), resolver, PrivacyTier.STANDARD)
    try:
        with pytest.raises(PermissionDenied, match="sovereign"):
            await gw.chat(HELLO, ChatOptions(model="far/m"))
    finally:
        await gw.gateway.close()
    gateway = Gateway.from_settings(_settings(tmp_path, "standard", providers), resolver=resolver)
    try:
        ctx = RequestContext.start(timeout=5)
        ctx.tighten_privacy(PrivacyTier.SOVEREIGN)  # what the auth slice does with a key's ceiling
        ctx.tighten_privacy(PrivacyTier.STANDARD)  # the request's own ask
        with pytest.raises(PermissionDenied, match="sovereign"):
            await gateway.chat(ctx, HELLO, ChatOptions(model="far/m"))
    finally:
        await gateway.close()
    assert (outside.connections, outside.bytes) == (0, 0)


@inside
async def test_standard_reaches_the_counter_and_a_pooled_connection_never_serves_sovereign(
    tmp_path: Path, outside: Counter
) -> None:
    """The control (the counter does see a Standard call), then the connect-time guard alone: a
    Sovereign request on the same client, past the stage, opens nothing and reuses nothing."""
    resolver = Resolver({"far.test": [[OUTSIDE_ADDRESS]]})
    gw = _gateway(_settings(tmp_path, "standard", {"far": f"http://far.test:{outside.port}/v1"}), resolver)
    try:
        assert (await gw.chat(HELLO, ChatOptions(model="far/m"))).message.content == "hi"
        assert outside.connections == 1 and outside.bytes > 0
        seen = (outside.connections, outside.bytes)
        provider = gw.gateway.router.providers["far"]
        with requested_tier(PrivacyTier.SOVEREIGN), pytest.raises(PermissionDenied, match="sovereign"):
            await provider.client.post(f"http://far.test:{outside.port}/v1/chat/completions", json={})
        await asyncio.sleep(0.05)
        assert (outside.connections, outside.bytes) == seen
    finally:
        await gw.gateway.close()


@inside
async def test_model_lists_and_registry_refresh_go_through_the_guard(tmp_path: Path, outside: Counter) -> None:
    resolver = Resolver({"far.test": [[OUTSIDE_ADDRESS]]})
    settings = _settings(
        tmp_path,
        "sovereign",
        {"far": f"http://far.test:{outside.port}/v1"},
        registry={"openrouter_url": f"http://far.test:{outside.port}/models", "cache_file": tmp_path / "r.json"},
    )
    gw = _gateway(settings, resolver)
    try:
        assert [m.info.id for m in await gw.list_models()] == []  # far is not listed, not even asked
        with pytest.raises(PermissionDenied, match="sovereign"):
            await gw.gateway.router.providers["far"].list_models()
        report = await gw.gateway.refresh_registry()
        (source,) = report.sources
        assert not source.ok and "sovereign" in source.error
        assert (outside.connections, outside.bytes) == (0, 0)
    finally:
        await gw.gateway.close()
