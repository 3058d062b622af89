"""HTTP clients for providers, built in one place so every upstream gets the same limits.

Timeouts (connect, read, write, pool) and connection pools come from
``[http]``; HTTP/2 is offered to every upstream (httpx negotiates it over
TLS with ALPN and stays on HTTP/1.1 where the upstream does not speak it).
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from ratatoskr_server.config import HttpSettings


def build_client(settings: HttpSettings, *, base_url: str, headers: Mapping[str, str]) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        headers=dict(headers),
        http2=settings.http2,
        timeout=httpx.Timeout(
            connect=settings.connect_timeout_s,
            read=settings.read_timeout_s,
            write=settings.write_timeout_s,
            pool=settings.pool_timeout_s,
        ),
        limits=httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_keepalive_connections,
        ),
        follow_redirects=False,
        trust_env=False,  # no proxy or netrc surprises: egress is what the configuration says
    )
