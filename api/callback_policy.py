"""Where a callback may go: public addresses only, unless the operator allows a network.

A ``callback_url`` is checked when it is submitted (a 422 that says why) and again before
every delivery attempt: the host is resolved anew and the connection is pinned to an address
that passed, so a name that later resolves to an internal address (DNS rebinding) reaches
nothing inside.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

import anyio
import httpx

from execmesh.errors import PermanentError

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Resolver = Callable[[str], Awaitable[Sequence[IPAddress]]]

SCHEMES = frozenset({"http", "https"})


class RefusedCallback(PermanentError):
    """A callback URL the platform will not call; the message says why."""


class UnresolvedHost(RefusedCallback):
    """The callback host did not resolve (at delivery, worth another attempt)."""


@dataclass(frozen=True)
class PinnedRequest:
    """The callback request aimed at one checked address, still naming the original host."""

    url: httpx.URL
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)


def non_public_kind(address: IPAddress) -> str | None:
    """What kind of non-public address this is, or None for a public one."""
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return non_public_kind(address.ipv4_mapped)
        # 6to4 embeds an IPv4 address: 2002:7f00:1:: is 127.0.0.1 behind a relay.
        embedded = None if address.sixtofour is None else non_public_kind(address.sixtofour)
        if embedded is not None:
            return f"6to4 {embedded}"
    kinds = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("non-public", not address.is_global),
    )
    return next((kind for kind, matches in kinds if matches), None)


def address_refusal(address: IPAddress, allowed: Sequence[IPNetwork]) -> str | None:
    """Why a callback may not connect to ``address``, or None when it may."""
    if _in_any(address, allowed):
        return None
    kind = non_public_kind(address)
    return None if kind is None else f"{_shown(address)} is a {kind} address"


def parse_callback_url(url: str) -> httpx.URL:
    """The URL if its form is acceptable: http(s), a host, no user name or password."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise RefusedCallback(f"{url!r} is not a valid URL: {error}") from None
    if parsed.scheme not in SCHEMES:
        raise RefusedCallback(f"the scheme must be http or https, not {parsed.scheme!r}")
    if parsed.userinfo:
        raise RefusedCallback("the URL must not carry a user name or password")
    if not parsed.host:
        raise RefusedCallback("the URL has no host")
    return parsed


def pinned_request(url: httpx.URL, address: IPAddress) -> PinnedRequest:
    """``url`` sent to ``address``: the Host header, and for TLS the SNI, keep the name."""
    if _literal_address(url.host) is not None:
        return PinnedRequest(url)
    extensions: dict[str, Any] = {}
    if url.scheme == "https":
        extensions["sni_hostname"] = url.host
    return PinnedRequest(
        url.copy_with(host=str(address)),
        headers={"Host": url.netloc.decode("ascii")},
        extensions=extensions,
    )


async def resolve_host(host: str) -> list[IPAddress]:
    """Every address ``host`` resolves to, looked up in a worker thread."""
    try:
        answers = await anyio.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise UnresolvedHost(f"the host {host} does not resolve: {error}") from None
    return list(dict.fromkeys(ip_address(sockaddr[0]) for *_, sockaddr in answers))


class CallbackPolicy:
    def __init__(
        self, allowed_networks: Sequence[IPNetwork] = (), resolve: Resolver = resolve_host
    ) -> None:
        self.allowed_networks = tuple(allowed_networks)
        self.resolve = resolve

    async def allowed_addresses(self, url: str) -> list[IPAddress]:
        """The addresses ``url`` may be called at; ``RefusedCallback`` when there are none."""
        parsed = parse_callback_url(url)
        literal = _literal_address(parsed.host)
        addresses = [literal] if literal is not None else list(await self.resolve(parsed.host))
        if not addresses:
            raise UnresolvedHost(f"the host {parsed.host} does not resolve")
        refusals = [address_refusal(address, self.allowed_networks) for address in addresses]
        allowed = [a for a, refusal in zip(addresses, refusals, strict=True) if refusal is None]
        if not allowed:
            why = "; ".join(r for r in refusals if r)
            if literal is None:
                why = f"the host {parsed.host} resolves only to non-public addresses ({why})"
            raise RefusedCallback(f"{why}; callbacks go to public addresses only")
        return allowed

    async def pin(self, url: str) -> PinnedRequest:
        """The request to send now, aimed at an address that passed the check just now."""
        addresses = await self.allowed_addresses(url)
        return pinned_request(parse_callback_url(url), addresses[0])


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ip_address(host)
    except ValueError:
        return None


def _shown(address: IPAddress) -> str:
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return f"{address} (IPv4 {address.ipv4_mapped})"
    return str(address)


def _in_any(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
