"""The HTTP front's listener: aiohttp's server on the daemon's own event loop.

Why aiohttp: it runs as a coroutine in the loop the gRPC server already uses (no second loop, no
thread, no ASGI layer between the socket and the handler), it has served production traffic for a
decade, and its HTTP parser is C (llhttp).  bench/http_front.py measures what the front adds.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ratatoskr_server.config import HttpFrontSettings
from ratatoskr_server.fronts.grpc.status import Front
from ratatoskr_server.fronts.openai_http.app import build_app
from ratatoskr_server.gateway import Gateway

log = logging.getLogger(__name__)


class HttpFront:
    """Started with the daemon when ``http_front.enabled``; stopped in its drain."""

    def __init__(
        self, settings: HttpFrontSettings, gateway: Gateway, front: Front, grace_s: float, *, reuse_port: bool = False
    ) -> None:
        self.settings = settings
        self.reuse_port = reuse_port
        app = build_app(gateway, front, max_body_bytes=int(settings.max_body_mb * 2**20))
        # In-flight requests get the daemon's shutdown grace, as gRPC calls do.
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=grace_s, handle_signals=False)
        self.address = ""

    async def start(self) -> str:
        """Listen; the address as ``http://host:port`` (the real port when 0 was asked for)."""
        await self.runner.setup()
        host, port = self.settings.host, self.settings.port
        site = web.TCPSite(self.runner, host, port, reuse_address=True, reuse_port=self.reuse_port or None)
        await site.start()
        port = int(self.runner.addresses[0][1])  # the bound port, when 0 was asked for
        self.address = f"http://{self.settings.host}:{port}"
        return self.address

    async def stop(self) -> None:
        """Stop listening, let in-flight requests finish within the grace, then close."""
        await self.runner.cleanup()
