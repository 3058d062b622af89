"""An upstream that answers 200 with something other than JSON: a clear UNAVAILABLE, never INTERNAL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web

from ratatoskr_client import Unavailable
from ratatoskr_client.types import ChatOptions, Message
from ratatoskr_server.config import load_settings
from ratatoskr_server.embedded import EmbeddedGateway
from tests.upstreams import openai_double
from tests.upstreams.harness import Upstream, serve

PORTAL = "<html><body>Please sign in to the hotel Wi-Fi</body></html>"


async def _portal(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    return web.Response(text=PORTAL, content_type="text/html")


async def _list(request: web.Request, upstream: Upstream) -> web.StreamResponse:
    return web.json_response([1, 2, 3])  # JSON, but not the object the API answers with


@pytest.fixture(scope="module")
def portal() -> Iterator[Upstream]:
    with serve({("POST", "/v1/chat/completions"): _portal, ("POST", "/v1/embeddings"): _portal,
                ("GET", "/v1/models"): _list}) as up:  # fmt: skip
        yield up


@pytest.fixture(scope="module")
def good() -> Iterator[Upstream]:
    with serve(openai_double.routes()) as up:
        yield up


@pytest.fixture
async def gw(portal: Upstream, good: Upstream) -> AsyncIterator[EmbeddedGateway]:
    providers = {
        "portal": {"kind": "openai_compat", "base_url": f"{portal.base_url}/v1", "local": True},
        "good": {"kind": "openai_compat", "base_url": f"{good.base_url}/v1", "local": True},
    }
    gateway = EmbeddedGateway(load_settings(local={"preload": [], "auto_import_default": False}, providers=providers))
    yield gateway
    await gateway.close()


async def test_a_non_json_answer_is_unavailable_naming_the_provider(gw: EmbeddedGateway) -> None:
    with pytest.raises(Unavailable, match=r"portal: answered 200 with a body that is not JSON \(text/html"):
        await gw.chat([Message("user", "hi")], ChatOptions(model="portal/m"))
    with pytest.raises(Unavailable, match="not JSON"):
        await gw.embed(["x"], model="portal/m")


async def test_one_broken_provider_does_not_fail_the_model_list(gw: EmbeddedGateway) -> None:
    listed = {m.info.id for m in await gw.list_models()}
    assert "good/gpt-test" in listed
    assert not any(name.startswith("portal/") for name in listed)
