"""Privacy tiers: what each address satisfies, the request's ask over gRPC, listings and the CLI.

The proof that a forbidden host gets nothing (0 connections, 0 bytes, DNS rebinding) runs in a
network namespace: ``test_privacy_netns.py``.  Here the forbidden provider is 192.0.2.1
(TEST-NET-1, never routed): a refusal that answers at once, naming the tier and the host, is one
that did not try to connect.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ratatoskr_client.errors import InvalidArgument, PermissionDenied
from ratatoskr_client.types import ChatOptions, Message, PrivacyTier
from ratatoskr_server.config import ConfigError, load_settings
from ratatoskr_server.net.egress import EgressPolicy, EgressRefused
from tests.conftest import DaemonProcess, run_ratatoskr
from tests.upstreams import openai_double
from tests.upstreams.harness import Upstream, serve

HELLO = [Message(role="user", content="Hello")]
FAR = "192.0.2.1"


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_what_an_address_satisfies() -> None:
    settings = load_settings(
        providers={
            "lan": {"kind": "ollama", "base_url": "http://gpu-box.lan:11434", "private": True},
            "azure": {"kind": "openai_compat", "base_url": "https://mine.openai.azure.com/v1", "dedicated": True},
            "other": {"kind": "openai_compat", "base_url": "http://other.lan:8000/v1", "local": True},
        }
    )
    policy = EgressPolicy.from_settings(settings)
    sovereign, private, standard = PrivacyTier.SOVEREIGN, PrivacyTier.PRIVATE, PrivacyTier.STANDARD
    assert policy.tier_of("anything", _ip("127.0.0.1")) is sovereign
    assert policy.tier_of("anything", _ip("::1")) is sovereign
    assert policy.tier_of("gpu-box.lan", _ip("192.168.1.20")) is sovereign  # declared private, private range
    assert policy.tier_of("gpu-box.lan", _ip("8.8.8.8")) is standard  # declared private, public address
    assert policy.tier_of("other.lan", _ip("192.168.1.20")) is standard  # `local` is a label, not a declaration
    assert policy.tier_of("mine.openai.azure.com", _ip("20.1.2.3")) is private  # dedicated, wherever it is
    assert policy.tier_of("api.example.com", _ip("20.1.2.3")) is standard
    with pytest.raises(
        EgressRefused, match=r"other: privacy tier 'private' forbids connecting to other\.lan \(192\.168\.1\.20\)"
    ):
        policy.check("other.lan", [_ip("127.0.0.1"), _ip("192.168.1.20")], private)  # one address outside: out
    policy.check("mine.openai.azure.com", [_ip("20.1.2.3")], private)


async def test_resolved_addresses_are_judged_as_what_they_reach() -> None:
    async def mapped(host: str, port: int) -> list[str]:
        return ["::ffff:127.0.0.1", "::ffff:10.9.9.9"]

    policy = EgressPolicy(PrivacyTier.SOVEREIGN, resolver=mapped, cache_s=0)
    reach = await policy.reach("mapped.test", 80)
    assert reach.addresses == (_ip("127.0.0.1"), _ip("10.9.9.9")) and reach.tier is PrivacyTier.STANDARD
    assert (await policy.reach("127.0.0.1", 80)).tier is PrivacyTier.SOVEREIGN  # a literal is not resolved


def test_the_request_tier_only_tightens_the_global_one() -> None:
    policy = EgressPolicy(PrivacyTier.PRIVATE)
    assert policy.effective(PrivacyTier.STANDARD) is PrivacyTier.PRIVATE
    assert policy.effective(PrivacyTier.SOVEREIGN) is PrivacyTier.SOVEREIGN
    assert policy.effective(None) is PrivacyTier.PRIVATE


def test_config_rejects_an_unknown_tier() -> None:
    with pytest.raises(ConfigError, match=r"privacy\.tier"):
        load_settings(privacy={"tier": "secret"})


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as up:
        yield up


@pytest.fixture(scope="module")
def privacy_daemon(model_root: Path, upstream: Upstream) -> Iterator[DaemonProcess]:
    d = DaemonProcess(
        model_root,
        local={"preload": []},
        providers={
            "near": {"kind": "openai_compat", "base_url": f"{upstream.base_url}/v1"},
            "far": {"kind": "openai_compat", "base_url": f"http://{FAR}:9/v1"},
        },
    ).start()
    yield d
    d.stop()


def test_a_request_asks_for_sovereign_over_grpc(privacy_daemon: DaemonProcess) -> None:
    with privacy_daemon.client(timeout=30, privacy_tier=PrivacyTier.SOVEREIGN) as client:
        with pytest.raises(PermissionDenied) as refused:
            client.chat(HELLO, ChatOptions(model="far/m"))
        assert "sovereign" in refused.value.message and FAR in refused.value.message
        with pytest.raises(PermissionDenied, match="sovereign"):
            list(client.chat_stream(HELLO, ChatOptions(model="far/m")))
        assert client.chat(HELLO, ChatOptions(model="near/gpt-test")).provider == "near"
        listed = {m.info.provider for m in client.list_models(task=None)}
    assert "near" in listed and "far" not in listed


def test_an_unknown_tier_in_metadata_is_invalid_argument(privacy_daemon: DaemonProcess) -> None:
    with privacy_daemon.client(timeout=30) as client:
        client._metadata = (("x-ratatoskr-privacy-tier", "secret"),)
        with pytest.raises(InvalidArgument, match="unknown privacy tier"):
            client.chat(HELLO, ChatOptions(model="near/gpt-test"))


def test_backends_shows_each_providers_tier_and_filters_by_one(privacy_daemon: DaemonProcess) -> None:
    config = str(privacy_daemon.config_path)
    done = run_ratatoskr("backends", "--json", "--config", config, "--tier", "sovereign", "--timeout", "3")
    rows = json.loads(done.stdout)
    assert [(r["name"], r["tier"], r["addresses"]) for r in rows] == [("near", "sovereign", ["127.0.0.1"])]
    assert rows[0]["reachable"] is True and done.returncode == 0
    every = {
        r["name"]: r
        for r in json.loads(run_ratatoskr("backends", "--json", "--config", config, "--timeout", "1").stdout)
    }
    assert every["far"]["tier"] == "standard" and every["far"]["addresses"] == [FAR]
    assert every["near"]["tier"] == "sovereign"
