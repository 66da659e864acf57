"""Reading the market: ``GET /v1/calls`` (lists), ``GET /v1/calls/{id}`` (one call) and
``GET /v1/reports`` (grouped counters), each scoped to the caller.

- the operator sees every call and every row;
- a publisher its submitted calls, and reports over them (its payout, not the buyers' price);
- a buyer the calls one of its routes rang (its own route, price and events only; never other
  buyers' bids), and reports over the calls its campaigns were considered for or asked to bid
  on (its spend, not the publishers' payout).

Lists are read from the call logs (``calllog``) and reports from the hourly aggregate
(``tally``) that the call desk keeps as calls happen: no request scans the ledger.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import msgspec

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .accounts import Account
from .core import CallRecord
from .errors import Invalid, NotFound
from .access import auth
from .http import _exchange, _when, reply
from .instants import rfc3339
from .lifecycle import event_response
from .replay import record as replay_record, view as replay_view
from .tally import Tally, sliced
from .tally import BILLABLE, CALLS, COMPLETED, DURATION, GROUPS, HOUR_NS, MARGIN, PAYOUT, REJECTED, REVENUE, ROUTED, RTB, WIDTH, WINS, answer_p50_ms

STATUSES = ("routed", "connected", "completed", "failed", "expired", "rejected")
CALL_COLUMNS = ("call_id", "created_at", "status", "decision", "reason", "vertical", "state", "publisher", "buyer", "campaign",
                "route_index", "price_cents", "billable", "charged_cents", "payout_cents")
REPORT_COLUMNS = ("key", "calls", "routed", "rejected", "fill_rate", "wins", "win_rate", "billable", "completed",
                  "revenue_cents", "payout_cents", "margin_cents", "avg_duration_s", "rtb_requests", "rtb_answer_p50_ms")
DAY_NS = 24 * HOUR_NS


# ------------------------------------------------------------------ one call, as its reader may see it
def rung(rec: CallRecord, buyer: str) -> list[int]:
    """The routes of ``rec`` that rang for ``buyer`` (its legs engaged), in order."""
    ks = {k for _, e, k in rec.history if e == "routed"}
    if rec.active:
        ks.add(rec.index)
    return sorted(k for k in ks if k < len(rec.routes) and rec.routes[k].buyer == buyer)


def visible(account: Account, rec: CallRecord) -> bool:
    if account.kind == "operator":
        return True
    if account.kind == "publisher":
        return rec.publisher == account.id
    return bool(rung(rec, account.id))


def call_view(account: Account, rec: CallRecord) -> dict[str, Any]:
    if account.kind != "buyer":
        return {
            "call_id": rec.call_id,
            "status": rec.status,
            "created_at": rfc3339(rec.created_ns),
            "request": rec.request,
            "decision": rec.decision,
            "route_index": rec.index,
            "events": [{"at": rfc3339(t), "event": e, "route_index": k} for t, e, k in rec.history],
            "billable": rec.billable,
            "charged_cents": rec.charged_cents,
            "payout_cents": rec.payout_cents,
            "evidence": rec.evidence,
            "quality": rec.quality,
            "current": event_response(rec),
        }
    mine = rung(rec, account.id)
    billed = rec.billable and rec.index in mine
    return {  # the buyer's own legs only: no other bid, no payout, no compliance evidence
        "call_id": rec.call_id,
        "status": rec.status if rec.index in mine else "moved",  # "moved": the call went on to another buyer's route
        "created_at": rfc3339(rec.created_ns),
        "vertical": rec.vertical,
        "direction": rec.direction,
        "state": rec.state,
        "caller": rec.caller,
        "routes": [{"route_index": k, "campaign": rec.routes[k].campaign, "price_cents": rec.routes[k].price_cents,
                    "destination": rec.routes[k].destination, "min_duration_s": rec.routes[k].min_duration_s} for k in mine],
        "route_index": rec.index if rec.index in mine else mine[-1],
        "events": [{"at": rfc3339(t), "event": e, "route_index": k} for t, e, k in rec.history if k in mine],
        "billable": billed,
        "charged_cents": rec.charged_cents if billed else 0,
    }


def _row(account: Account, rec: CallRecord) -> tuple[object, ...]:
    d = rec.decision
    if account.kind == "buyer":
        v = call_view(account, rec)
        k = v["route_index"]
        r = rec.routes[k]
        return (rec.call_id, v["created_at"], v["status"], d.decision if d else "", d.reason if d else "", rec.vertical, rec.state or "",
                "", account.id, r.campaign, k, r.price_cents, v["billable"], v["charged_cents"], "")
    r = rec.route if rec.routes else None
    return (rec.call_id, rfc3339(rec.created_ns), rec.status, d.decision if d else "", d.reason if d else "", rec.vertical,
            rec.state or "", rec.publisher, r.buyer if r else "", r.campaign if r else "", rec.index if r else "",
            r.price_cents if r else "", rec.billable, rec.charged_cents, rec.payout_cents)


async def get_call(request: Request) -> Response:
    account = auth(request, "publisher", "operator", "buyer")
    call_id = request.path_params["call_id"]
    rec = _exchange(request).core.calls.get(call_id)
    if rec is None or not visible(account, rec):
        raise NotFound("unknown_call", f"no call {call_id!r}")
    return reply(call_view(account, rec))


# ------------------------------------------------------------------ the auction replay
async def get_auction(request: Request) -> Response:
    """``GET /v1/calls/{id}/auction``: every candidate of the call's auction (the operator), or
    the buyer's own and the clearing price; publishers may not (403). From the call in memory,
    else from its decision's audit record."""
    account = auth(request, "operator", "buyer")
    ex = _exchange(request)
    call_id = request.path_params["call_id"]
    buyer = None if account.kind == "operator" else account.id
    rec = ex.core.calls.get(call_id)
    if rec is not None and rec.decision is not None and rec.replay is not None:
        d = rec.decision
        routes = [(r.buyer, r.campaign, r.bid_cents, r.price_cents) for r in rec.routes]
        bids = [(b, c, x) for b, c, x, _ in rec.replay.bids]
        body = replay_view(call_id, d.decision, d.reason, replay_record(rec.replay), bids, routes, buyer)
    else:  # past retention, or rebuilt after a restart: the decision's audit record
        with ex.journal.reading():
            rows = await ex.journal.store.audit_query(call_id, None, None, None, limit=10)
        head = next((r for r in rows if r.kind == "decision"), None)
        if head is None:
            raise NotFound("unknown_call", f"no call {call_id!r}")
        rb = msgspec.json.decode(head.body)
        if "replay" not in rb:
            raise NotFound("no_replay", f"no auction was recorded for call {call_id!r} (EXCHANGE_AUCTION_REPLAY was off)")
        routes = [(r["buyer"], r["campaign"], r["bid_cents"], r["price_cents"]) for r in rb.get("routes", ())]
        bids = [(b["buyer"], b["campaign"], b["bid_cents"]) for b in rb.get("bids", ())]
        d = rb["decision"]
        body = replay_view(call_id, d["decision"], d["reason"], rb["replay"], bids, routes, buyer)
    if body is None:  # not a call this buyer was asked about or considered for: as if unknown
        raise NotFound("unknown_call", f"no call {call_id!r}")
    return reply(body)


# ------------------------------------------------------------------ lists
def _query(request: Request, *names: str) -> dict[str, str | None]:
    """The query parameters ``names`` (None when absent); one given empty, or one not among
    ``names``, is refused (a misspelt filter must not silently widen a list or a report)."""
    q = request.query_params
    for name in q:
        if name not in names:
            raise Invalid("invalid_query", f"unknown query parameter {name!r}; use: {', '.join(names)}", f"$.{name}")
    out: dict[str, str | None] = {}
    for name in names:
        raw = q.get(name)
        if raw == "":
            raise Invalid("invalid_query", f"{name} is empty: give a value or leave it out", f"$.{name}")
        out[name] = raw
    return out


def _int(raw: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise Invalid("invalid_query", f"{name} must be a whole number from {lo} to {hi}", f"$.{name}")
    return int(raw)


def _csv(columns: tuple[str, ...], rows: list[tuple[object, ...]]) -> Response:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns)
    w.writerows(["" if x is None else str(x).lower() if isinstance(x, bool) else x for x in row] for row in rows)
    return PlainTextResponse(buf.getvalue(), media_type="text/csv")


async def list_calls(request: Request) -> Response:
    account = auth(request, "publisher", "operator", "buyer")
    ex = _exchange(request)
    q = _query(request, "from", "to", "status", "limit", "cursor")
    lo, hi = _when(q["from"], "from"), _when(q["to"], "to")
    status = q["status"]
    if status is not None and status not in STATUSES:
        raise Invalid("invalid_query", f"status must be one of: {', '.join(STATUSES)}", "$.status")
    limit = _int(q["limit"], "limit", 100, 1, 1000)
    cursor = _int(q["cursor"], "cursor", -1, 0, (1 << 62)) if q["cursor"] is not None else None
    owner = None if account.kind == "operator" else account.id
    recs, after = ex.desk.log.page(owner, ex.core.calls, lo, hi, (lambda r: r.status == status) if status else _any, limit, cursor)
    recs = [r for r in recs if visible(account, r)]
    if "text/csv" in request.headers.get("accept", ""):
        return _csv(CALL_COLUMNS, [_row(account, r) for r in recs])
    return reply({"calls": [call_view(account, r) for r in recs], "next_cursor": None if after is None else str(after)})


def _any(rec: CallRecord) -> bool:
    return True


# ------------------------------------------------------------------ reports
def _ratio(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


async def warm(tally: Tally, group_by: str, kind: str, owner: str | None, lo: int, hi: int, now: int) -> None:
    """Group the report's uncached closed hours a slice at a time, letting decisions and other
    requests run between slices: a month's first report reads every cell of the month once (seconds
    at 200 calls/s), and must not hold the event loop for all of it."""
    await sliced(tally.warm(group_by, kind, owner, lo, hi, now))


def report_row(kind: str, key: object, c: list[int]) -> dict[str, Any]:
    return {
        "key": key,
        "calls": c[CALLS], "routed": c[ROUTED], "rejected": c[REJECTED], "fill_rate": _ratio(c[ROUTED], c[CALLS]),
        "wins": c[WINS], "win_rate": _ratio(c[WINS], c[CALLS]), "billable": c[BILLABLE], "completed": c[COMPLETED],
        "revenue_cents": c[REVENUE] if kind != "publisher" else None,  # what buyers paid: not the publisher's to see
        "payout_cents": c[PAYOUT] if kind != "buyer" else None,  # what publishers earned: not the buyer's to see
        "margin_cents": c[MARGIN] if kind == "operator" else None,
        "avg_duration_s": round(c[DURATION] / c[COMPLETED], 1) if c[COMPLETED] else None,
        "rtb_requests": c[RTB], "rtb_answer_p50_ms": answer_p50_ms(c) if len(c) > WIDTH else None,
    }


async def get_reports(request: Request) -> Response:
    account = auth(request, "publisher", "operator", "buyer")
    ex = _exchange(request)
    q = _query(request, "from", "to", "group_by")
    group_by = q["group_by"] or "hour"
    if group_by not in GROUPS:
        raise Invalid("invalid_query", f"group_by must be one of: {', '.join(GROUPS)}", "$.group_by")
    now = ex.clock.now_ns()
    hi = _when(q["to"], "to") or now
    lo = _when(q["from"], "from")
    lo = hi - DAY_NS if lo is None else lo
    if lo >= hi:
        raise Invalid("invalid_query", "from must be before to", "$.from")
    kind = account.kind
    owner = None if kind == "operator" else account.id
    await warm(ex.desk.tally, group_by, kind, owner, lo, hi, now)
    rows = ex.desk.tally.report(group_by, kind, owner, lo, hi, now)
    out = [report_row(kind, rfc3339(k) if group_by == "hour" else k, c) for k, c in rows]
    if group_by == "publisher" and ex.settings.quality_signals:  # each publisher's risk score now, and its inputs
        quality = ex.core.quality
        for row in out:
            signals = quality.report(row["key"], now)
            row["quality"] = signals if kind != "buyer" else {"risk_score": signals["risk_score"]}  # a buyer: the score it filters on
    if "text/csv" in request.headers.get("accept", ""):
        if out and "quality" in out[0]:
            return _csv(REPORT_COLUMNS + ("risk_score",), [tuple(r[c] for c in REPORT_COLUMNS) + (r["quality"]["risk_score"],) for r in out])
        return _csv(REPORT_COLUMNS, [tuple(r[c] for c in REPORT_COLUMNS) for r in out])
    return reply({"group_by": group_by, "from": rfc3339(lo // HOUR_NS * HOUR_NS), "to": rfc3339(-(-hi // HOUR_NS) * HOUR_NS), "rows": out})


__all__ = ["get_call", "get_auction", "list_calls", "get_reports", "call_view", "visible"]
