"""The live dashboard: ``GET /dashboard`` (one static page) and ``GET /v1/dashboard/stream``.

The page (``exchange/static/dashboard.html``: plain HTML, CSS and JavaScript, no build step,
charts drawn as SVG by the page itself) asks for a key, keeps it in ``sessionStorage`` and
sends it as the ``Authorization`` header of a streaming ``fetch`` -- never in a URL. The stream
is server-sent events: one ``data:`` line of JSON per ``interval_ms`` (default 1 s), a
*snapshot* of what the key may see, built from the same data as ``GET /v1/reports`` (the
hourly tally, through ``report_row``) plus the exchange's counters (``/metrics``):

- ``rates``: calls/s, routed/s, bids/s over the last interval (the operator: the whole market;
  a publisher: its calls and those routed; a buyer: the calls its campaigns were considered for
  and its wins -- from running totals the tally keeps per account, O(1) to read);
- ``latency_us``: the p50/p99 decision time of the interval's decisions (operator, publisher);
- ``totals``: the last 24 hours, one report row (calls, fill, wins, money as the key may see it);
- ``reasons``: the last 24 hours by reason (the operator and a publisher: calls by decision
  reason; a buyer: its campaigns' outcomes -- won, outbid, below_floor, timeout...);
- ``top``: the operator's top buyers and publishers; a buyer's campaigns; a publisher's buyers.

The report-built parts (totals, reasons, top rows) group the open hour's cells, so they are
computed at most every 5 s per account (``SLOW_NS``) and shared by that account's streams; the
rates and latency are read every interval from counters. Each account may
hold ``MAX_STREAMS_PER_KEY`` streams open at once (a 429 past it), so one tenant's tabs cannot
crowd the others.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from .accounts import Account
from .errors import RateLimited
from .http import _exchange, auth
from .instants import rfc3339
from .metrics import Histogram
from .reports_api import _int, _query, report_row
from .service import Exchange
from .tally import CALLS, HOUR_NS, WIDTH

DAY_NS = 24 * HOUR_NS
MAX_STREAMS_PER_KEY = 4
TOP = 6
_PAGE = files("exchange").joinpath("static/dashboard.html").read_bytes()
_enc = msgspec.json.Encoder()
_open: dict[str, int] = {}  # account id -> streams open now
SLOW_NS = 5_000_000_000  # the report-built parts of a snapshot are recomputed at most this often per account
_slow_cache: dict[tuple[int, str], tuple[int, dict[str, Any]]] = {}


async def home(request: Request) -> Response:
    """``/``: the dashboard is the page to open."""
    return RedirectResponse("/dashboard", status_code=307)


async def page(request: Request) -> Response:
    """The page itself: public (it holds no data; the key is typed into it). Its one script runs
    by a nonce drawn per response; no other script may (``Content-Security-Policy``)."""
    nonce = secrets.token_urlsafe(18)
    return Response(_PAGE.replace(b"<script>", b'<script nonce="' + nonce.encode() + b'">', 1), media_type="text/html; charset=utf-8", headers={
        "Cache-Control": "no-store",
        "Content-Security-Policy": f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src data:; "
                                   "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    })


class Probe:
    """What one stream remembers between snapshots, to turn counters into rates."""

    __slots__ = ("t_ns", "calls", "routed", "bids", "decisions")

    def __init__(self) -> None:
        self.t_ns = 0
        self.calls = self.routed = self.bids = self.decisions = 0


def _sum(rows: list[tuple[Any, list[int]]]) -> list[int]:
    out: list[int] = []
    for _, c in rows:
        if not out:
            out = list(c)
        else:
            for i in range(min(len(out), len(c))):
                out[i] += c[i]
    return out


def interval_us(h: Histogram, since: int) -> dict[str, int] | None:
    """p50 and p99 of the decisions ``h`` observed since it counted ``since`` (its newest raw
    samples, from its ring of the last ones); None when there were none."""
    k = min(h.n - since, len(h.window))
    if k <= 0:
        return None
    w = h.window
    if len(w) < h._cap:
        data = sorted(w[len(w) - k:])
    else:
        i = h._w
        data = sorted(w[i - k:i] if k <= i else list(w[i - k:]) + list(w[:i]))
    return {"p50": data[len(data) // 2], "p99": data[min(len(data) - 1, int(0.99 * len(data)))], "n": len(data)}


def _slow(ex: Exchange, account: Account, now: int) -> dict[str, Any]:
    """The report-built parts of a snapshot (24 h totals, reasons, top rows): each groups the
    open hour's cells, so they are computed at most once per ``SLOW_NS`` per account and shared
    by its streams."""
    key = (id(ex), account.id)
    hit = _slow_cache.get(key)
    if hit is not None and now - hit[0] < SLOW_NS:
        return hit[1]
    kind = account.kind
    owner = None if kind == "operator" else account.id
    tally = ex.desk.tally

    def report(group_by: str) -> list[tuple[Any, list[int]]]:
        return tally.report(group_by, kind, owner, now - DAY_NS, now + 1, now)

    day = report("hour")
    names = ex.accounts.by_id
    if kind == "operator":
        top = {"buyers": _top(kind, report("buyer"), "revenue_cents", names),
               "publishers": _top(kind, report("publisher"), "calls", names)}
    elif kind == "buyer":
        top = {"campaigns": _top(kind, report("campaign"), "wins", None)}
    else:
        top = {"buyers": _top(kind, report("buyer"), "routed", names)}
    parts = {
        "totals": report_row(kind, "24h", _sum(day) if day else [0] * WIDTH),
        "reasons": [{"reason": k, "calls": c[CALLS]} for k, c in report("reason")],
        "top": top,
    }
    if len(_slow_cache) > 1024:
        _slow_cache.clear()
    _slow_cache[key] = (now, parts)
    return parts


def snapshot(ex: Exchange, account: Account, probe: Probe) -> dict[str, Any]:
    now = ex.clock.now_ns()
    kind = account.kind
    if kind == "operator":
        s = ex.core.stats
        calls, routed, bids = s.calls, s.routed, ex.metrics.bids_ingested
    else:  # the tenant's running totals (a publisher: calls, routed; a buyer: pings, wins)
        calls, routed = ex.desk.tally.running.get(account.id, (0, 0))
        bids = 0
    dt = (now - probe.t_ns) / 1e9 if probe.t_ns else 0.0
    rates = None
    if dt > 0:
        rates = {"calls_per_s": round((calls - probe.calls) / dt, 2), "routed_per_s": round((routed - probe.routed) / dt, 2),
                 "bids_per_s": round((bids - probe.bids) / dt, 1) if kind == "operator" else None}
    latency = interval_us(ex.metrics.decision_us, probe.decisions) if kind != "buyer" and probe.t_ns else None
    probe.t_ns, probe.calls, probe.routed, probe.bids, probe.decisions = now, calls, routed, bids, ex.metrics.decision_us.n
    out: dict[str, Any] = {"at": rfc3339(now), "kind": kind, "account": account.id, "name": account.name,
                           "rates": rates, "latency_us": latency, **_slow(ex, account, now)}
    if kind == "operator":
        out["market"] = {"campaigns": len(ex.core.book), "parked": ex.core.book.parked, "active_calls": len(ex.core.active),
                         "buyers_connected": ex.metrics.buyer_connections, "bids_total": bids}
    return out


def _top(kind: str, rows: list[tuple[Any, list[int]]], by: str, names: dict[str, Account] | None) -> list[dict[str, Any]]:
    """The first ``TOP`` rows by ``by``, each with its account's name (``names``: accounts by id)."""
    out = [report_row(kind, k, c) for k, c in rows if k is not None]
    out.sort(key=lambda r: -(r[by] or 0))
    return [{"key": r["key"], "name": names[r["key"]].name if names is not None and r["key"] in names else r["key"], "calls": r["calls"], "wins": r["wins"], "routed": r["routed"], "billable": r["billable"],
             "revenue_cents": r["revenue_cents"], "payout_cents": r["payout_cents"], "win_rate": r["win_rate"],
             "fill_rate": r["fill_rate"]} for r in out[:TOP]]


async def stream(request: Request) -> Response:
    """``GET /v1/dashboard/stream?interval_ms=``: server-sent events, one snapshot a line."""
    account = auth(request, "operator", "buyer", "publisher")
    q = _query(request, "interval_ms")
    interval = _int(q["interval_ms"], "interval_ms", 1000, 200, 60_000) / 1000
    if _open.get(account.id, 0) >= MAX_STREAMS_PER_KEY:
        raise RateLimited("too_many_streams", f"at most {MAX_STREAMS_PER_KEY} dashboard streams per key at once", retry_after_s=5)
    ex = _exchange(request)

    async def events() -> AsyncIterator[bytes]:
        probe = Probe()
        _open[account.id] = _open.get(account.id, 0) + 1  # counted once it runs: a stream never started holds no place
        try:
            yield b"retry: 2000\n\n"
            while ex.ready:
                t0 = time.monotonic()
                yield b"data: " + _enc.encode(snapshot(ex, account, probe)) + b"\n\n"
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))
        finally:
            n = _open.get(account.id, 1) - 1
            if n:
                _open[account.id] = n
            else:
                _open.pop(account.id, None)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


__all__ = ["home", "page", "stream", "snapshot", "interval_us"]
