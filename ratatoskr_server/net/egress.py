"""The egress guard: where a connection may go under a privacy tier, decided on the resolved address.

A tier is a promise about where data goes, so it is checked where data would leave: at connect
time, on the address the socket is about to reach, not on a provider's kind or its hostname.  The
host is resolved once, every resolved address is checked, and the socket goes only to an address
that passed; a name that resolves to loopback for a check and elsewhere for the connect (DNS
rebinding) cannot slip through, because the connect never resolves again.

What an address satisfies:
- sovereign: loopback (this host), and addresses in ``privacy.private_networks`` of a host that a
  provider declared ``private``;
- private: any address of a host that a provider declared ``dedicated`` (an allow-listed
  deployment, e.g. an Azure OpenAI resource of one's own);
- standard: anything else.
Declarations are per host, taken from the providers' base URLs, so the same host is judged the
same way by chat, embeddings, model lists and registry refreshes alike.

The tier a connection is held to is the strictest of ``privacy.tier`` and the tier the request's
privacy stage set in ``requested_tier`` (the caller key's ceiling, the request's ask).  Calls
outside a request (registry refresh, model lists, health checks) are held to ``privacy.tier``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from ratatoskr_client.errors import PermissionDenied
from ratatoskr_client.types import PrivacyTier

if TYPE_CHECKING:
    from ratatoskr_server.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``(host, port) -> addresses``, as text, in the order to try them.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

#: The tier the current request asked for (set by the privacy stage around the call); None outside one.
_requested: ContextVar[PrivacyTier | None] = ContextVar("ratatoskr_requested_tier", default=None)


@contextmanager
def requested_tier(tier: PrivacyTier | None) -> Iterator[None]:
    """Hold connections made inside the block to ``tier`` (tightened with the global setting)."""
    token = _requested.set(tier)
    try:
        yield
    finally:
        _requested.reset(token)


def current_requested_tier() -> PrivacyTier | None:
    return _requested.get()


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver, off the event loop, duplicates dropped."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


@dataclass(frozen=True, slots=True)
class Declaration:
    """What the configuration says of one host: declared private, allow-listed as dedicated."""

    private: bool = False
    dedicated: bool = False
    #: The provider(s) naming the host, for messages.
    names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reach:
    """Where a host resolved and the strictest tier every one of those addresses satisfies."""

    host: str
    addresses: tuple[IPAddress, ...]
    tier: PrivacyTier


class EgressRefused(PermissionDenied):
    """A connection the request's privacy tier forbids; no byte was sent to the host."""

    def __init__(self, *, tier: PrivacyTier, host: str, address: IPAddress, satisfied: PrivacyTier, who: str) -> None:
        named = f"{who}: " if who else ""
        shown = "" if host == str(address) else f" ({address})"
        super().__init__(
            f"{named}privacy tier '{tier}' forbids connecting to {host}{shown}: "
            f"that address satisfies only '{satisfied}'"
        )
        self.tier = tier
        self.host = host
        self.address = address
        self.satisfied = satisfied


def _loosest(tiers: Sequence[PrivacyTier]) -> PrivacyTier:
    return max(tiers, key=lambda t: t.rank)


class EgressPolicy:
    """The rules every outbound connection of one configuration is checked against."""

    def __init__(
        self,
        tier: PrivacyTier = PrivacyTier.STANDARD,
        *,
        private_networks: Sequence[IPNetwork] = (),
        declarations: Mapping[str, Declaration] | None = None,
        resolver: Resolver | None = None,
        cache_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tier = tier
        self.private_networks = tuple(private_networks)
        self.declarations: Mapping[str, Declaration] = dict(declarations or {})
        self.resolver: Resolver = resolver or system_resolver
        self.cache_s = cache_s
        self._clock = clock
        self._cache: dict[tuple[str, int], tuple[float, Reach]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, resolver: Resolver | None = None) -> EgressPolicy:
        declarations: dict[str, Declaration] = {}
        for name, entry in settings.providers.items():
            host = host_of(entry.base_url)
            if not host or not entry.enabled:
                continue
            seen = declarations.get(host, Declaration())
            declarations[host] = Declaration(
                private=seen.private or entry.private,
                dedicated=seen.dedicated or entry.dedicated,
                names=(*seen.names, name),
            )
        privacy = settings.privacy
        return cls(
            privacy.tier,
            private_networks=privacy.private_networks,
            declarations=declarations,
            resolver=resolver,
            cache_s=privacy.resolve_cache_s,
        )

    # -- decisions -----------------------------------------------------------------------------------
    def effective(self, requested: PrivacyTier | None = None) -> PrivacyTier:
        """The tier a connection made now is held to: the global one, tightened by the request's."""
        return self.tier.tightest(requested if requested is not None else _requested.get())

    def tier_of(self, host: str, address: IPAddress) -> PrivacyTier:
        """The strictest tier a connection to ``address`` (reached as ``host``) satisfies."""
        if address.is_loopback:
            return PrivacyTier.SOVEREIGN
        declared = self.declarations.get(host.lower(), Declaration())
        if declared.private and any(address in net for net in self.private_networks):
            return PrivacyTier.SOVEREIGN
        if declared.dedicated:
            return PrivacyTier.PRIVATE
        return PrivacyTier.STANDARD

    def check(self, host: str, addresses: Sequence[IPAddress], tier: PrivacyTier) -> None:
        """Refuse unless every address of ``host`` satisfies ``tier``: a host that is only partly
        inside is treated as outside, whichever address a connect would pick."""
        for address in addresses:
            satisfied = self.tier_of(host, address)
            if satisfied.rank > tier.rank:
                who = ", ".join(self.declarations.get(host.lower(), Declaration()).names)
                raise EgressRefused(tier=tier, host=host, address=address, satisfied=satisfied, who=who)

    # -- resolution ----------------------------------------------------------------------------------
    async def resolve(self, host: str, port: int) -> tuple[IPAddress, ...]:
        """The host's addresses (an address literal is itself); resolved every time it is asked."""
        literal = _literal(host)
        if literal is not None:
            return (literal,)
        answers = await self.resolver(host, port)
        addresses = tuple(_plain(ipaddress.ip_address(a.split("%", 1)[0])) for a in answers)
        if not addresses:
            raise OSError(f"{host} resolved to no address")
        return addresses

    async def reach(self, host: str, port: int) -> Reach:
        """Where ``host`` resolves and the tier it satisfies, remembered for ``cache_s`` seconds.

        For decisions ahead of a call (the privacy stage, listings); the connect itself always
        resolves again and checks what it connects to.
        """
        key = (host.lower(), port)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        addresses = await self.resolve(host, port)
        reach = Reach(host, addresses, _loosest([self.tier_of(host, a) for a in addresses]))
        if self.cache_s > 0:
            self._cache[key] = (now + self.cache_s, reach)
        return reach


def host_of(url: str) -> str:
    """The host part of a base URL (``{model}`` placeholders allowed elsewhere in it), lowercased."""
    try:
        return httpx.URL(url.replace("{model}", "model")).host.lower()
    except (httpx.InvalidURL, ValueError):
        return ""


def port_of(url: str) -> int:
    parsed = httpx.URL(url.replace("{model}", "model"))
    return parsed.port or (443 if parsed.scheme == "https" else 80)


def _literal(host: str) -> IPAddress | None:
    try:
        return _plain(ipaddress.ip_address(host.strip("[]").split("%", 1)[0]))
    except ValueError:
        return None


def _plain(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) as the IPv4 address it reaches, so it is
    judged (loopback, private ranges) and connected to as that."""
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address
