"""Who is calling: bearer keys, checked and rate limited.

Authentication is rate limited: one token bucket per account (every request made with its
key) and one per client address for failed attempts (a missing or unknown key), so key
guessing is slow too. An address out of tokens is refused before its key is even looked
at, so a blocked guesser learns nothing. Refusals are ``429 rate_limited`` with a
``Retry-After`` in whole seconds. The buckets live on ``app.state.http_limits`` (built on
first use); ``identify`` is the address-counted key check, usable by a WebSocket handshake.
A valid key also tells the connection it has authenticated (``AUTHENTICATED``), so it leaves
its address's count of unauthenticated connections (``server.ReadDeadlineProtocol``).
"""

from __future__ import annotations

import math
import time
from typing import Any

from starlette.requests import HTTPConnection, Request

from .accounts import Account, bearer
from .errors import Forbidden, RateLimited, Unauthenticated
from .ratelimit import RateLimiter
from .service import Exchange


def _exchange(conn: HTTPConnection) -> Exchange:
    return conn.app.state.exchange


class HttpLimits:
    """The HTTP API's token buckets: ``key:<account>`` per account, ``ip:<address>`` for
    failed authentications. Built on first use and kept on ``app.state``."""

    PRUNE_EVERY_S = 10.0

    __slots__ = ("buckets", "_next_prune_s")

    def __init__(self, rate_per_s: float, burst: float) -> None:
        self.buckets = RateLimiter(rate_per_s, burst)
        self._next_prune_s = 0.0

    def take(self, key: str, now_s: float) -> None:
        """Spend a token of ``key``; raises 429 when there is none."""
        if now_s >= self._next_prune_s:  # forget idle buckets now and then: the table stays small
            self.buckets.prune(now_s)
            self._next_prune_s = now_s + self.PRUNE_EVERY_S
        wait_s = self.buckets.take(key, now_s)
        if wait_s > 0:
            retry = max(1, math.ceil(wait_s))
            raise RateLimited("rate_limited", f"too many requests; retry after {retry} s", retry_after_s=retry)

    def blocked(self, key: str) -> bool:
        """True while ``key``'s last attempt was refused (the caller then pays before anything else)."""
        return self.buckets.strikes(key) > 0


def http_limits(conn: HTTPConnection) -> HttpLimits:
    return limits_of(conn.app.state, _exchange(conn))


def limits_of(state: Any, ex: Exchange) -> HttpLimits:
    """The app's buckets (``app.state.http_limits``), built on first use."""
    limits = getattr(state, "http_limits", None)
    if limits is None:
        settings = ex.settings
        limits = HttpLimits(settings.rate_limit_http_per_s, settings.rate_limit_http_burst)
        state.http_limits = limits
    return limits


AUTHENTICATED = "dce.authenticated"  # ASGI scope key: the connection's "a valid key was presented" (server.py)


def check_key(ex: Exchange, limits: HttpLimits, host: str, authorization: str | None,
              scope: Any = None) -> Account:
    """The account of a bearer key. Failed attempts are counted per client address: 401, or
    429 once that address is out of tokens; a blocked address is refused before its key is
    looked at. A valid key tells the connection (``scope``) it no longer counts among its
    address's unauthenticated ones."""
    address = "ip:" + host
    paid = limits.blocked(address)
    if paid:  # refused a moment ago: no key is checked until this address has a token again
        limits.take(address, time.monotonic())
    account = ex.accounts.authenticate(bearer(authorization))
    if account is None:
        if not paid:
            limits.take(address, time.monotonic())
        raise Unauthenticated("unauthorized", "missing or unknown API key", headers={"WWW-Authenticate": "Bearer"})
    if scope is not None:
        done = scope.get(AUTHENTICATED)
        if done is not None:
            done()
    return account


def admit(limits: HttpLimits, account: Account, roles: tuple[str, ...]) -> Account:
    """Spend a token of the account's own bucket (429 when it is empty), then check the role (403)."""
    limits.take("key:" + account.id, time.monotonic())
    if account.kind not in roles:
        raise Forbidden("forbidden", f"this endpoint is not open to {account.kind} keys")
    return account


def identify(conn: HTTPConnection) -> Account:
    """``check_key`` for an HTTP request or a WebSocket handshake."""
    return check_key(_exchange(conn), http_limits(conn), conn.client.host if conn.client is not None else "?",
                     conn.headers.get("authorization"), conn.scope)


def auth(request: Request, *roles: str) -> Account:
    """``identify``, then ``admit``."""
    return admit(http_limits(request), identify(request), roles)
