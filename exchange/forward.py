"""An edge's HTTP API, forwarded to its market's seller (``exchange.nodes``).

An edge decides no call and holds no market-wide memory of money or calls, so every HTTP
request it gets (but ``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``) goes to the
seller: one extra HTTP hop on loopback or the LAN (calls and events: a frame on the call link,
``exchange.nodelink``), with the body streamed (a DNC upload is not held in the edge's memory)
and the answer passed back as it came (status, JSON or CSV body, ``Retry-After``,
``WWW-Authenticate``). The key is checked here first, with the same per-address limit of failed
attempts as everywhere (an account made at the seller since this edge started is read from the
store): an unknown key never reaches the seller, whose own per-address limit would otherwise count
every client of this edge as one. Per-key rate limits, roles, validation and idempotency are the
seller's, as for a request sent to it.

The seller's address is the ``host:port`` it registered in its lease: start nodes with an
``EXCHANGE_HOST`` the others can reach (not ``0.0.0.0``, which is read as this host).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import aiohttp

from .errors import Refused, Unavailable
from .access import AUTHENTICATED, check_key, limits_of
from .nodelink import carried

if TYPE_CHECKING:
    from .service import Exchange

log = logging.getLogger("exchange.forward")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
REQUEST_HEADERS = {b"authorization", b"content-type", b"accept", b"idempotency-key", b"content-length"}
ANSWER_HEADERS = {"content-type", "retry-after", "www-authenticate", "content-disposition", "connection"}


class Forwarder:
    """One keep-alive pool to the seller (aiohttp: its C parser; httpx's pure-Python engine cost an
    edge about as much CPU per forwarded call as the seller spent deciding it, ``bench.nodes``)."""

    __slots__ = ("ex", "_client")

    def __init__(self, ex: Exchange) -> None:
        self.ex = ex
        self._client: aiohttp.ClientSession | None = None

    @property
    def client(self) -> aiohttp.ClientSession:
        if self._client is None:  # made in the running loop, on first use
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=60.0, use_dns_cache=False),
                timeout=aiohttp.ClientTimeout(total=30.0, sock_connect=2.0), trust_env=False, auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"))
        return self._client

    def seller_url(self) -> str | None:
        return seller_url(self.ex)

    async def __call__(self, scope: Scope, receive: Receive, send: Send, state: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """The seller's answer to this request (status, headers, body); ``Refused`` for a
        refusal made here (an unknown key, no seller reachable)."""
        headers = [(k, v) for k, v in scope["headers"] if k in REQUEST_HEADERS]
        authorization = next((v.decode("latin-1") for k, v in headers if k == b"authorization"), None)
        client = scope.get("client")
        host = client[0] if client else "?"
        ex = self.ex
        try:
            check_key(ex, limits_of(state, ex), host, authorization, scope)
        except Refused as exc:
            if exc.code != "unauthorized" or await ex.account_of_key(authorization) is None:
                raise
            done = scope.get(AUTHENTICATED)  # a key made at the seller: valid here too
            if done is not None:
                done()
        base = self.seller_url()
        if base is None:
            raise Unavailable("not_seller", "no seller is known for this market now: retry", retry_after_s=1)
        query = scope.get("query_string", b"")
        method, path = scope["method"], scope["path"]
        body = await _body(receive)
        link = ex.link.calls if ex.link is not None else None  # calls and events: the call link (exchange.nodelink)
        if link is not None and carried(method, path) and not isinstance(body, AsyncIterator):
            answer = await link.request(method, path, query, headers, body or b"", host)
            if answer is not None:
                ex.metrics.node_link_requests += 1
                return answer
        url = base + path + (("?" + query.decode("latin-1")) if query else "")
        headers.append((b"x-forwarded-for", host.encode()))
        sent = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k != b"content-length"}
        try:
            async with self.client.request(method, url, headers=sent, data=body, allow_redirects=False) as r:
                body = await r.read()
                out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in r.headers.items() if k.lower() in ANSWER_HEADERS]
                return r.status, out, body
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("forward_failed", extra={"url": base, "error": str(exc)})
            raise Unavailable("seller_unreachable", "this edge cannot reach its market's seller now: retry",
                              retry_after_s=1) from None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


def seller_url(ex: Exchange, scheme: str = "http") -> str | None:
    """The seller's base URL from its lease (None: no seller known, or this node is it)."""
    found = ex.node.seller_host() if ex.node is not None else None
    return None if found is None else f"{scheme}://{found[0]}:{found[1].get('port')}"


async def _body(receive: Receive) -> bytes | AsyncIterator[bytes] | None:
    """The request's body: as bytes when it came in one message (a call, an event: sent on with
    its length; streamed, it went chunked, which cost both nodes CPU per call), else streamed on as
    it comes (a DNC upload is not held in the edge's memory)."""
    message = await receive()
    if message["type"] != "http.request":
        return None
    first = message.get("body", b"")
    if not message.get("more_body", False):
        return first or None
    return _rest(first, receive)


async def _rest(first: bytes, receive: Receive) -> AsyncIterator[bytes]:
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return
