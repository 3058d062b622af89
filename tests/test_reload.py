"""Configuration reload through a real daemon: swapped whole, in-flight calls on their own configuration,
a bad file refused whole, and no call lost to SIGHUP under load."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ratatoskr_client import ServiceClient
from ratatoskr_client.types import ChatOptions, ChatResult, Message
from tests.conftest import DaemonProcess, run_ratatoskr
from tests.upstreams import openai_double
from tests.upstreams.harness import Upstream, serve

HELLO = [Message(role="user", content="hello")]


def _answering(name: str) -> dict[tuple[str, str], Any]:
    """An OpenAI-compatible upstream whose answers say which upstream gave them."""

    async def chat(request: web.Request, upstream: Upstream) -> web.StreamResponse:
        body = await request.json()
        answer = openai_double._unary(body["model"], body)
        answer["choices"][0]["message"]["content"] = f"answered by {name}"
        return web.json_response(answer)

    return {("POST", "/v1/chat/completions"): chat}


def _held_then_unavailable(release: threading.Event) -> dict[tuple[str, str], Any]:
    """An upstream that holds each call until ``release``, then answers 503 (so the route falls back)."""

    async def chat(request: web.Request, upstream: Upstream) -> web.StreamResponse:
        upstream.streaming.set()  # "a call is here"
        await asyncio.to_thread(release.wait)  # the test thread opens it
        status, payload, headers = openai_double.ERRORS["unavailable"]
        return web.json_response(payload, status=status, headers=headers)

    return {("POST", "/v1/chat/completions"): chat}


def _provider(upstream: Upstream) -> dict[str, Any]:
    return {"kind": "openai_compat", "base_url": f"{upstream.base_url}/v1"}


@pytest.fixture
def upstreams() -> Iterator[tuple[threading.Event, Upstream, Upstream, Upstream]]:
    release = threading.Event()
    with (
        serve(_held_then_unavailable(release)) as held,
        serve(_answering("old-backup")) as old,
        serve(_answering("new-backup")) as new,
    ):
        try:
            yield release, held, old, new
        finally:
            release.set()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_call_in_flight_finishes_on_its_configuration_while_new_calls_see_the_new_one(
    model_root: Path, upstreams: tuple[threading.Event, Upstream, Upstream, Upstream]
) -> None:
    """The held call's fallback is decided after the reload, by the pipeline it started on."""
    release, held, old_backup, new_backup = upstreams
    d = DaemonProcess(
        model_root,
        providers={"held": _provider(held), "backup": _provider(old_backup)},
        routes={"m": {"candidates": ["held/gpt-test", "backup/gpt-test"]}},
        resilience={"attempts": 1, "breaker": {"enabled": False}},
    ).start()
    try:
        with d.client(timeout=10) as client:
            before = client.status()
        assert before.config_generation == 1 and before.config_sha256 == _sha256(d.config_path)
        outcome: dict[str, ChatResult | BaseException] = {}

        def call() -> None:
            try:
                with ServiceClient(d.socket, timeout=60) as slow:
                    outcome["old"] = slow.chat(HELLO, ChatOptions(model="m"))
            except BaseException as err:
                outcome["old"] = err

        worker = threading.Thread(target=call)
        worker.start()
        assert held.streaming.wait(30), d.log()  # the call is at the held upstream

        d.config["providers"]["backup"] = _provider(new_backup)
        d.config["routes"]["m"] = {"candidates": ["backup/gpt-test"]}
        d.config["server"]["max_in_flight"] = 100
        d.write_config()
        with d.client(timeout=10) as client:
            result = client.reload()
            assert result.applied, result.message
            assert result.generation == 2 and result.config_sha256 == _sha256(d.config_path)
            assert result.changed == ["providers.backup.base_url", "routes.m.candidates", "server.max_in_flight"]
            assert result.needs_restart == []
            # A new call takes the new route and provider while the old call still waits.
            fresh = client.chat(HELLO, ChatOptions(model="m"))
            assert fresh.message.content == "answered by new-backup"
            assert worker.is_alive()
            status = client.status()
            assert status.config_generation == 2 and status.max_in_flight == 100
        release.set()
        worker.join(timeout=60)
        answer = outcome.get("old")
        # Its fallback came from the configuration it started with: the old backup, old address.
        assert isinstance(answer, ChatResult), f"{answer!r}\n{d.log()}"
        assert answer.message.content == "answered by old-backup"
        assert len(old_backup.requests) == 1 and len(new_backup.requests) == 1
        (line,) = [r for r in d.records() if r.get("msg") == "configuration reloaded"]
        assert line["generation"] == 2
    finally:
        assert d.stop() == 0


def test_a_broken_configuration_is_refused_whole_and_nothing_changes(
    model_root: Path, upstreams: tuple[threading.Event, Upstream, Upstream, Upstream]
) -> None:
    _release, _held, old_backup, _new = upstreams
    d = DaemonProcess(
        model_root,
        providers={"backup": _provider(old_backup)},
        routes={"m": {"candidates": ["backup/gpt-test"]}},
    ).start()
    try:
        good = d.config_path.read_bytes()
        with d.client(timeout=10) as client:
            before = client.status()
            # One valid change and one that fails preflight (a default model on a provider that does not
            # exist): neither is taken.
            d.config["server"]["max_in_flight"] = 5
            d.config["routes"]["m"] = {"candidates": ["backup/other-model"]}
            d.config["local"]["default_embed_model"] = "nobody/embedder"
            d.write_config()
            refused = client.reload()
            assert not refused.applied
            assert "local.default_embed_model" in refused.message and "'nobody'" in refused.message, refused.message
            assert "the running configuration is unchanged" in refused.message
            assert refused.generation == 1 and refused.config_sha256 == before.config_sha256
            # A value the settings tree rejects, and a file that is not TOML at all.
            del d.config["local"]["default_embed_model"]
            d.config["server"]["max_in_flight"] = -1
            d.write_config()
            assert "server.max_in_flight" in client.reload().message
            d.config_path.write_text("server = [", encoding="utf-8")
            broken = client.reload()
            assert not broken.applied and "not valid TOML" in broken.message
            # `ratatoskr reload` (systemd's ExecReload) fails with the reason.
            cli = run_ratatoskr("reload", "--socket", str(d.socket))
            assert cli.returncode == 1 and cli.stderr.startswith("reload refused: "), cli.stdout + cli.stderr
            assert "not valid TOML" in cli.stderr and "Traceback" not in cli.stderr
            after = client.status()
            assert (after.config_generation, after.config_sha256, after.max_in_flight) == (
                1,
                before.config_sha256,
                before.max_in_flight,
            )
            assert client.chat(HELLO, ChatOptions(model="m")).message.content == "answered by old-backup"
            assert len(client.embed(["the old default embed model still answers"]).vectors) == 1
        assert [r.body["model"] for r in old_backup.requests] == ["gpt-test"]  # never other-model
        assert hashlib.sha256(good).hexdigest() == before.config_sha256
        assert not [r for r in d.records() if r.get("msg") == "configuration reloaded"]
        assert len([r for r in d.records() if r.get("msg", "").startswith("reload refused")]) == 4
        d.config["server"]["max_in_flight"] = 5
        d.config["routes"]["m"] = {"candidates": ["backup/gpt-test"]}
        d.write_config()  # fixed: the command applies it and lists what changed
        cli = run_ratatoskr("reload", "--socket", str(d.socket))
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert cli.stdout.splitlines() == [
            "reloaded (configuration generation 2)",
            "  applied:        server.max_in_flight",
        ]
    finally:
        assert d.stop() == 0


def test_sighup_under_load_fails_no_call(model_root: Path) -> None:
    d = DaemonProcess(model_root).start()
    failures: list[BaseException] = []
    done = threading.Event()
    calls = [0]

    def load() -> None:
        with ServiceClient(d.socket, timeout=30) as client:
            while not done.is_set():
                try:
                    assert len(client.embed(["under load", "while reloading"]).vectors) == 2
                    calls[0] += 1
                except BaseException as err:
                    failures.append(err)

    workers = [threading.Thread(target=load) for _ in range(2)]
    try:
        for w in workers:
            w.start()
        deadline = time.monotonic() + 30
        while calls[0] < 2:  # the load is running before the first SIGHUP
            assert time.monotonic() < deadline and not failures, failures or d.log()
            time.sleep(0.01)
        before = calls[0]
        for n in range(1, 4):
            d.config["server"]["max_in_flight"] = 100 + n
            d.write_config()
            d.signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while len([r for r in d.records() if r.get("msg") == "configuration reloaded"]) < n:
                assert time.monotonic() < deadline, d.log()
                time.sleep(0.02)
        done.set()
        for w in workers:
            w.join(timeout=30)
        assert not failures, failures[:3]
        assert calls[0] > before  # calls ran across the reloads, and none failed
        with d.client(timeout=10) as client:
            status = client.status()
        assert status.config_generation == 4 and status.max_in_flight == 103
    finally:
        done.set()
        assert d.stop() == 0
