"""HTTP bidders: the pings of campaigns with a ``ping`` (exchange.pingspec), sent and read.

One connection pool for every endpoint (aiohttp: HTTP/1.1 keep-alive, its C response parser;
no redirect ever followed, no proxy from the environment). Each new connection resolves the
endpoint's host through ``CheckedResolver``, which checks every address it gets (exchange.ssrf:
link-local and metadata always refused; loopback and private unless ``ping_allow_loopback``) and
hands the connector only the address it checked, with no DNS cache in between, so a DNS answer
that changes cannot turn a ping into a request to the exchange's network; the TLS name (SNI,
certificate) stays the host's. At most ``ping_inflight`` pings are in flight per buyer and
endpoint (scheme, host, port): one more is a ``no_bid`` ``busy`` at once rather than a queue
that would only make it late; buyers that share a ping platform do not share its bound.

A ping runs on after its round closes (``tmax_ms``) for at most ``ping_grace_ms`` more, so a
bidder that is just slow keeps its pooled connection instead of being reconnected on every
call; its answer is not used (the round counted it ``late``). Every outcome is counted per
campaign (``GET /v1/pings``) and per reason (``/metrics``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from array import array
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from . import ssrf
from .metrics import Metrics
from .pingspec import CallView, PingPlan, Priced, read_answer, render

log = logging.getLogger("exchange.pings")
Key = tuple[str, str]  # (buyer id, campaign id)
WINDOW = 256  # answer times kept per campaign for its p50 / p99


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver for pings: every address of the host checked (exchange.ssrf), only
    checked addresses returned; asked on every new connection (the connector caches nothing)."""

    def __init__(self, allow_loopback: bool, own: tuple[str, int]) -> None:
        self.allow_loopback, self.own = allow_loopback, own

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        ip = await ssrf.resolve(ssrf.Target("http", host, port, "/"), self.allow_loopback, self.own)
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        return [{"hostname": host, "host": ip, "port": port, "family": fam, "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


class PingStats:
    __slots__ = ("pings", "bids", "no_bids", "last_reason", "last_status", "times", "_w")

    def __init__(self) -> None:
        self.pings = self.bids = 0
        self.no_bids: dict[str, int] = {}
        self.last_reason: str | None = None
        self.last_status: int | None = None
        self.times = array("I")
        self._w = 0

    def no_bid(self, reason: str) -> None:
        self.no_bids[reason] = self.no_bids.get(reason, 0) + 1
        self.last_reason = reason

    def answered(self, ms: int) -> None:
        if len(self.times) < WINDOW:
            self.times.append(ms)
        else:
            self.times[self._w] = ms
            self._w = (self._w + 1) % WINDOW

    def view(self) -> dict[str, Any]:
        t = sorted(self.times)
        return {"pings": self.pings, "bids": self.bids, "no_bids": dict(sorted(self.no_bids.items())),
                "last_no_bid_reason": self.last_reason, "last_http_status": self.last_status,
                "answer_p50_ms": t[len(t) // 2] if t else None, "answer_p99_ms": t[min(len(t) - 1, len(t) * 99 // 100)] if t else None}


class HttpBidders:
    def __init__(self, settings: Any, metrics: Metrics) -> None:
        s, self.metrics = settings, metrics
        self.inflight_cap, self.max_body, self.grace_s = s.ping_inflight, s.ping_max_body_bytes, s.ping_grace_ms / 1000
        self.allow_loopback, self.own = s.ping_allow_loopback, (s.host, s.port)
        self.plans: dict[Key, PingPlan] = {}
        self.stats: dict[Key, PingStats] = {}
        self.in_flight: dict[tuple[str, str, str, int], int] = {}  # (buyer, scheme, host, port) -> pings in flight
        self.tasks: set[asyncio.Task[Priced | str]] = set()
        self.max_connections = s.ping_max_connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """Made on first use, inside the running loop."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.max_connections, use_dns_cache=False, keepalive_timeout=60.0,
                                             resolver=CheckedResolver(self.allow_loopback, self.own))
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=True,
                                                  skip_auto_headers=("Accept-Encoding",),
                                                  headers={"User-Agent": "dce-exchange-ping/1", "Accept": "application/json"})
        return self._session

    # ------------------------------------------------------------------ campaigns
    def register(self, key: Key, plan: PingPlan | None) -> None:
        if plan is None:
            self.plans.pop(key, None)
        else:
            self.plans[key] = plan
            self.stats.setdefault(key, PingStats())

    async def check(self, plan: PingPlan) -> None:
        """When the campaign is sent: the URL's host resolves to addresses a ping may reach
        (``ssrf.UrlRefused`` otherwise). Checked again on every new connection."""
        await ssrf.resolve(ssrf.Target(plan.scheme, plan.host, plan.port, "/"), self.allow_loopback, self.own)

    def check_literal(self, plan: PingPlan) -> bool:
        """The same check, done at once when the host is an IP address; False if it is a name."""
        try:
            ssrf.check_address(plan.host, self.allow_loopback)
        except ValueError as exc:
            if isinstance(exc, ssrf.UrlRefused):
                raise
            return False
        if ssrf.is_self(ssrf.Target(plan.scheme, plan.host, plan.port, "/"), [plan.host], self.own):
            raise ssrf.UrlRefused("the URL points at the exchange itself")
        return True

    # ------------------------------------------------------------------ pings
    def start(self, key: Key, plan: PingPlan, call: CallView, native: Any, tmax_ms: int) -> asyncio.Task[Priced | str] | str:
        """Send one ping; its task gives a bid or a no_bid reason. ``busy`` (a str) at once if
        the endpoint has ``ping_inflight`` pings in flight already."""
        ep = (key[0], *plan.endpoint)  # per buyer and endpoint: buyers sharing a ping platform do not share its bound
        n = self.in_flight.get(ep, 0)
        stats = self.stats.setdefault(key, PingStats())
        stats.pings += 1
        self.metrics.pings += 1
        if n >= self.inflight_cap:
            return "busy"
        self.in_flight[ep] = n + 1
        task = asyncio.ensure_future(self._ping(key, plan, call, native, tmax_ms / 1000 + self.grace_s))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def outcome(self, key: Key, result: Priced | str, ms: int | None) -> None:
        """Count a ping's outcome for its campaign (``late``: none by ``tmax_ms``)."""
        stats = self.stats.setdefault(key, PingStats())
        if isinstance(result, str):
            stats.no_bid(result)
            reasons = self.metrics.ping_no_bids
            reasons[result] = reasons.get(result, 0) + 1
        else:
            stats.bids += 1
            self.metrics.ping_bids += 1
        if ms is not None:
            stats.answered(ms)

    async def _ping(self, key: Key, plan: PingPlan, call: CallView, native: Any, limit_s: float) -> Priced | str:
        ep = (key[0], *plan.endpoint)
        try:
            async with asyncio.timeout(limit_s):
                return await self._exchange(key, plan, call, native)
        except TimeoutError:
            return "late"
        except ssrf.UrlRefused:
            return "refused_address"
        except (aiohttp.ClientError, OSError):
            return "connect_error"
        except Exception:  # noqa: BLE001 - a bidder's answer must never take down the round
            log.exception("ping_failed", extra={"buyer": key[0], "campaign": key[1]})
            return "connect_error"
        finally:
            left = self.in_flight.get(ep, 1) - 1
            if left:
                self.in_flight[ep] = left
            else:
                self.in_flight.pop(ep, None)

    async def _exchange(self, key: Key, plan: PingPlan, call: CallView, native: Any) -> Priced | str:
        url, body = render(plan, call, native)
        async with self.session.request(plan.spec.method, url, data=body if plan.body is not None else None,
                                        headers=plan.headers, allow_redirects=False) as resp:
            self.stats[key].last_status = resp.status
            if resp.content_length is not None and resp.content_length > self.max_body:
                return "too_large"
            chunks, size = [], 0
            async for chunk in resp.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > self.max_body:
                    return "too_large"
                chunks.append(chunk)
        return read_answer(plan, resp.status, b"".join(chunks))

    async def close(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ views
    def view(self, buyer: str | None) -> list[dict[str, Any]]:
        """The HTTP-bidder campaigns of ``buyer`` (None: all) and their counts."""
        out = []
        for (b, c), plan in sorted(self.plans.items()):
            if buyer is None or b == buyer:
                st = self.stats.get((b, c)) or PingStats()
                out.append({"buyer": b, "campaign": c, "url": plan.spec.url, "method": plan.spec.method,
                            "in_flight": self.in_flight.get((b, *plan.endpoint), 0), **st.view()})
        return out

    def gauges(self) -> dict[str, int]:
        return {"ping_campaigns": len(self.plans), "pings_in_flight": sum(self.in_flight.values())}
