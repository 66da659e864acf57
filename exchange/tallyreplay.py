"""The report aggregate and the call logs rebuilt at start, from what the store holds.

``replay_audit`` reads the audit trail's decision and event records of the report window
(``EXCHANGE_REPORT_DAYS``) in pages of ``PAGE`` by sequence number and feeds them to the
tally as the call desk did when they happened: a decision's cells (its request's vertical and
state, the bids considered, the plan), a completion's duration and money, a fallback that
rang. Live bid requests that went unanswered are not on the trail, so a rebuilt hour counts
the RTB answers only. ``relog`` puts the calls recovered in flight back in the call logs.

With ``quality`` the call quality windows (``exchange.quality``) are rebuilt from the same
records in the same order: each decision that counted its caller (its ``quality`` evidence has
``caller_calls``) within the call window, each ``completed`` event within the outcome window
(with its route's ``min_duration_s``), so a restart does not reset a publisher's risk score.
"""

from __future__ import annotations

from typing import Any

import msgspec

from billing.store import Store
from compliance.numbers import parse_number

from .calllog import CallLog
from .core import CallRecord
from .quality import Quality, digits
from billing import keystore
from billing.vault import Vault, kids_in
from .tally import Tally

PAGE = 5_000
SQL = ("SELECT seq, at_ns, kind, call_id, number, body FROM audit "
       "WHERE seq > ? AND at_ns >= ? AND kind IN ('decision', 'event') ORDER BY seq LIMIT ?")

_decode = msgspec.json.Decoder(dict[str, Any]).decode


async def replay_audit(store: Store, tally: Tally, since_ns: int, min_floor_cents: int,
                       quality: Quality | None = None, calls_since_ns: int = 0, outcomes_since_ns: int = 0,
                       vault: Vault | None = None) -> int:
    """Feed the decisions and events recorded since ``since_ns`` to ``tally`` (and those since
    ``calls_since_ns`` / ``outcomes_since_ns`` to ``quality``); how many calls. The quality
    windows need the callers' numbers: with a ``vault``, a decision's sealed caller is opened
    (an erased one counts nothing)."""
    calls: dict[str, tuple[int, str, str, str | None, list[tuple[str, str]], int]] = {}  # routed: facts + route in use
    buffers: dict[str, tuple[str, list[int]]] = {}  # routed: publisher, each route's min_duration_s (for quality)
    after, n = 0, 0
    first = since_ns if quality is None else min(since_ns, calls_since_ns, outcomes_since_ns)
    while True:
        rows = await store.fetch(SQL, after, first, PAGE)
        sealed: set[int] = set()  # the seqs of decisions whose sealed caller the quality windows need
        if quality is not None and vault is not None:
            sealed = {r[0] for r in rows if r[2] == "decision" and r[1] >= calls_since_ns and "enc1:" in str(r[5])}
            if sealed:
                await keystore.load_keys(store, vault, {k for r in rows if r[0] in sealed for k in kids_in(str(r[5]))})
        for seq, at_ns, kind, call_id, number, body in rows:
            after = seq
            b = _decode(body if isinstance(body, (str, bytes)) else str(body))
            if seq in sealed and vault is not None:
                b = keystore.open_all(vault, b)
            if quality is not None:
                _quality(quality, buffers, kind, call_id, at_ns, b, calls_since_ns, outcomes_since_ns)
            if at_ns < since_ns:
                continue
            if kind == "decision":
                n += 1
                _decision(tally, calls, call_id, at_ns, number, b, min_floor_cents)
            elif call_id in calls:
                _event(tally, calls, call_id, b)
        if len(rows) < PAGE:
            return n


def _quality(q: Quality, buffers: dict[str, tuple[str, list[int]]], kind: str, call_id: str, at_ns: int, b: dict[str, Any],
             calls_since_ns: int, outcomes_since_ns: int) -> None:
    """One audit record into the quality windows, as it was counted when it happened."""
    if kind == "decision":
        publisher = b.get("publisher", "")
        if at_ns >= calls_since_ns and (b.get("quality") or {}).get("caller_calls") is not None:
            info = parse_number((b.get("request") or {}).get("caller") or "")
            number = digits(info.e164) if info is not None else None
            if number is not None:
                q.observe(publisher, number, at_ns)
        routes = b.get("routes") or ()
        if routes:
            buffers[call_id] = (publisher, [r.get("min_duration_s", 0) for r in routes])
    elif call_id in buffers:
        ev = b.get("event") or {}
        k = b.get("route_index", 0)
        if ev.get("event") == "completed" and b.get("status") == "completed":
            publisher, mins = buffers.pop(call_id)
            if at_ns >= outcomes_since_ns and k < len(mins):
                q.completed(publisher, ev.get("duration_s") or 0, mins[k], at_ns)
        elif b.get("status") not in ("routed", "connected"):
            buffers.pop(call_id, None)


def _decision(tally: Tally, calls: dict, call_id: str, at_ns: int, number: str | None, b: dict[str, Any], min_floor: int) -> None:
    req, dec = b.get("request") or {}, b.get("decision") or {}
    state = req.get("state") or b.get("consumer_state")  # (the consumer's state, kept beside its sealed number)
    if state is None and number and not number.startswith("h1:"):  # a record written before numbers were sealed
        info = parse_number(number)
        state = info.state if info is not None else None
    routes = [(r["buyer"], r["campaign"]) for r in b.get("routes") or ()]
    reason = dec.get("reason", "")
    tally.decided(at_ns, b.get("publisher", ""), req.get("vertical", ""), state, reason, routes,
                  [(x["buyer"], x["campaign"], x["bid_cents"]) for x in b.get("bids") or ()],
                  max(req.get("floor_cents") or 0, min_floor))
    if reason == "ok" and routes:
        calls[call_id] = (at_ns, b.get("publisher", ""), req.get("vertical", ""), state, routes, 0)


def _event(tally: Tally, calls: dict, call_id: str, b: dict[str, Any]) -> None:
    at_ns, publisher, vertical, state, routes, index = calls[call_id]
    ev, resp = b.get("event") or {}, b.get("response") or {}
    k = b.get("route_index", index)
    if ev.get("event") == "completed" and b.get("status") == "completed" and k < len(routes):
        charged, payout = resp.get("charged_cents", 0), resp.get("payout_cents", 0)
        billable = bool(resp.get("billable"))
        tally.completed(at_ns, publisher, vertical, state, routes[0], routes[k], "won" if k == 0 else "fallback",
                        ev.get("duration_s") or 0, billable, charged, payout, charged - payout if billable else 0)
        del calls[call_id]
    elif ev.get("event") == "failed":
        if b.get("status") in ("routed", "connected") and k != index and k < len(routes):
            tally.rang(at_ns, publisher, vertical, state, *routes[k])
            calls[call_id] = (at_ns, publisher, vertical, state, routes, k)
        else:
            del calls[call_id]


def relog(log: CallLog, calls: dict[str, CallRecord]) -> None:
    """The calls in memory (recovered in flight) into the call logs, in decision order."""
    for rec in sorted(calls.values(), key=lambda r: r.created_ns):
        log.decided(rec.call_id, rec.publisher, rec.created_ns)
        for _, e, k in rec.history:
            if e == "routed" and k < len(rec.routes):
                log.rang(rec.call_id, rec.routes[k].buyer, rec.created_ns)
        if rec.active and rec.route is not None and all(not (e == "routed" and k == rec.index) for _, e, k in rec.history):
            log.rang(rec.call_id, rec.route.buyer, rec.created_ns)


__all__ = ["replay_audit", "relog"]
