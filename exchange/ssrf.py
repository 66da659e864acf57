"""Outbound URLs the exchange calls on a tenant's behalf (webhooks), checked against
server-side request forgery.

A URL must be ``http`` or ``https`` with a host, and may not point at the exchange itself.
Every address its host resolves to must be public: private, loopback, unspecified, multicast
and reserved ranges are refused unless the operator allows loopback and private addresses
(``EXCHANGE_WEBHOOK_ALLOW_LOOPBACK``, on in tests); link-local and cloud metadata addresses
(169.254.0.0/16, fe80::/10, fd00:ec2::254) are refused always. The check runs when the URL is
registered and again before every delivery, on the addresses that delivery connects to: the
request goes to the checked address itself (``pin``), so a DNS answer that changes between
the check and the connection cannot redirect it, and redirects are never followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import urlsplit

ALWAYS_REFUSED = [ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128")]


class UrlRefused(ValueError):
    """Why a URL may not be called (the message is safe to show the tenant)."""


class Target(NamedTuple):
    scheme: str
    host: str
    port: int
    path: str  # path and query


@lru_cache(maxsize=8192)
def parse(url: str) -> Target:
    """``url`` checked and split (memoized: a webhook's URL is parsed again before every delivery;
    a refusal raises and is not cached)."""
    if len(url) > 2048:
        raise UrlRefused("the URL is longer than 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"the URL cannot be parsed: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UrlRefused("the URL must be http or https")
    if not parts.hostname:
        raise UrlRefused("the URL has no host")
    if parts.username or parts.password:
        raise UrlRefused("the URL may not carry credentials")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path)


def check_address(ip: str, allow_loopback: bool) -> None:
    why = _refusal(ip, allow_loopback)
    if why is not None:
        raise UrlRefused(why)


@lru_cache(maxsize=8192)
def _literal(host: str) -> bool:
    """Whether ``host`` is an IP address (memoized: parsing one cost ~12 % of a delivery's CPU)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=8192)
def _refusal(ip: str, allow_loopback: bool) -> str | None:
    """Why ``ip`` may not be called, or None: a pure function of the address, so memoized (the
    addresses a host resolves to are still looked up and checked before every delivery)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if any(addr in n for n in ALWAYS_REFUSED) or addr.is_link_local:
        return f"the URL resolves to {addr}, a link-local or cloud metadata address"
    if allow_loopback:
        return None
    if addr.is_loopback or addr.is_private or addr.is_unspecified or addr.is_multicast or addr.is_reserved or not addr.is_global:
        return f"the URL resolves to {addr}, a private or loopback address"
    return None


def is_self(t: Target, ips: list[str], own: tuple[str, int]) -> bool:
    """Whether ``t`` (resolved to ``ips``) is the exchange's own listening address."""
    host, port = own
    if t.port != port:
        return False
    if host in ("0.0.0.0", "::", ""):
        return any(_loopback(ip) for ip in ips) or t.host in ("localhost",)
    return t.host == host or host in ips


@lru_cache(maxsize=8192)
def _loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip.split("%", 1)[0]).is_loopback


async def resolve(t: Target, allow_loopback: bool, own: tuple[str, int] | None = None) -> str:
    """The address to connect to for ``t``: every address of its host checked (UrlRefused)."""
    if _literal(t.host):
        ips = [t.host]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(t.host, t.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise UrlRefused(f"the host {t.host!r} does not resolve: {exc}") from None
        ips = list(dict.fromkeys(str(i[4][0]) for i in infos))
    if not ips:
        raise UrlRefused(f"the host {t.host!r} does not resolve")
    for ip in ips:
        check_address(ip, allow_loopback)
    if own is not None and is_self(t, ips, own):
        raise UrlRefused("the URL points at the exchange itself")
    return ips[0]


def pin(t: Target, ip: str) -> str:
    """The URL of ``t`` with its host replaced by the checked address (Host and SNI keep the name)."""
    host = f"[{ip}]" if ":" in ip else ip
    return f"{t.scheme}://{host}:{t.port}{t.path}"
