"""A routed call's lifecycle, pure: legs engaged and released, events, expiry, billing.

Only the leg in use holds anything: its campaign's concurrency slot and cap counts, and
a hold of its price on the buyer's funds. ``completed`` at or past the route's
``min_duration_s`` (and not a repeat caller inside ``dedupe_days``) captures the hold as
one balanced charge entry: buyer -price, publisher +payout, exchange +margin. A short
call, a failure or an expiry releases the hold; ``failed`` moves the call to the next
route of the plan that can still take it.
"""

from __future__ import annotations

from datetime import datetime
from heapq import heappop

from billing.postings import charge
from routing.eligibility import refusal
from routing.schedule import UTC

from .errors import Conflict, Invalid, Refused
from routing.auction import PlannedRoute

from .core import CallRecord, Core, Notice
from .instants import from_ns
from .messages import CallEvent, CallNotice, EventResponse, Route, Win

NS = 1_000_000_000


def route_wire(r: PlannedRoute, expires_at: datetime) -> Route:
    return Route(buyer=r.buyer, campaign=r.campaign, destination=r.destination, payout_cents=r.payout_cents,
                 min_duration_s=r.min_duration_s, expires_at=expires_at)


def engage(core: Core, rec: CallRecord, start: int, now_ns: int, recheck: bool = False) -> Notice | None:
    """Put the first route from ``start`` that can take the call in use; its ``win`` notice."""
    for k in range(start, len(rec.routes)):
        r = rec.routes[k]
        st = core.book.get(r.buyer, r.campaign)
        if st is None or st.held or st.expired(now_ns):
            continue
        if recheck and refusal(core, st, rec.consumer, rec.direction, rec.consumer.npa if rec.consumer else None, r.price_cents, now_ns) is not None:
            continue
        if not core.ledger.hold(rec.call_id, st.account, r.price_cents, k, now_ns):
            continue
        lt = core.clock.at(st.schedule.zone if st.schedule is not None else UTC, now_ns)
        rec.taken = (st.capacity, st.capacity.take(lt, r.price_cents))
        rec.index, rec.status = k, "routed"
        expires_ns = now_ns + core.settings.route_ttl_s * NS
        core.expire_at(rec, expires_ns)
        rec.history.append((now_ns, "routed", k))
        return r.buyer, Win(
            call_id=rec.call_id, campaign=r.campaign, price_cents=r.price_cents, caller=rec.caller or "",
            destination=r.destination, expires_at=from_ns(expires_ns), min_duration_s=r.min_duration_s, route_index=k,
        )
    return None


def _disengage(core: Core, rec: CallRecord, outcome: str, now_ns: int) -> None:
    """Release the leg in use. ``outcome``: billable | short | failed. A call recovered after
    a restart whose campaign was not restored holds its price but no capacity slot."""
    if rec.taken is None and rec.call_id not in core.ledger.holds:
        return
    if rec.taken is not None:
        capacity, taken = rec.taken
        rec.taken = None
        capacity.release()
        if outcome != "billable":
            capacity.give_back(taken, spend_only=(outcome == "short"))
        core.book.lot.capacity_freed(capacity)
    r = rec.routes[rec.index]
    if outcome == "billable":
        entry = charge(rec.call_id, r.buyer, rec.publisher, r.price_cents, core.settings.take_rate_bps, now_ns)
        core.ledger.capture(rec.call_id, entry)
        rec.billable = True
        rec.charged_cents, rec.payout_cents, rec.margin_cents = r.price_cents, r.payout_cents, r.margin_cents
        stats = core.stats
        stats.billable += 1
        stats.charged_cents += r.price_cents
        stats.payout_cents += r.payout_cents
        stats.margin_cents += r.margin_cents
        if rec.consumer is not None:
            core.dedupe.record(r.buyer, rec.consumer.e164, now_ns)
    else:
        core.ledger.release(rec.call_id, now_ns)


def apply_event(core: Core, rec: CallRecord, key: str, ev: CallEvent, now_ns: int) -> tuple[EventResponse | Refused, list[Notice]]:
    """Apply one publisher event, idempotent by ``key`` (same key, same body: same answer)."""
    prior = rec.events.get(key)
    if prior is not None:
        if prior[0] != ev:
            return Conflict("idempotency_conflict", "this Idempotency-Key was used with a different body"), []
        return prior[1], []
    if not rec.active:
        return Conflict("call_finished", f"the call is already {rec.status}"), []
    if ev.route_index is not None and ev.route_index != rec.index:
        return Conflict("stale_route", f"the call is on route {rec.index}, not {ev.route_index}", "$.route_index"), []
    if ev.event == "completed" and ev.duration_s is None:
        return Invalid("invalid_message", "a completed event needs duration_s", "$.duration_s"), []
    r = rec.routes[rec.index]
    if ev.event == "connected" and rec.status == "connected":  # refused: no trace in the history
        return Conflict("already_connected", "the call is already connected"), []
    notices: list[Notice] = []
    rec.history.append((now_ns, ev.event, rec.index))
    if ev.event == "connected":
        rec.status = "connected"
        core.expire_at(rec, now_ns + core.settings.max_call_s * NS)
        notices.append((r.buyer, CallNotice(call_id=rec.call_id, status="connected")))
    elif ev.event == "completed":
        duration = ev.duration_s or 0
        billable = duration >= r.min_duration_s and not (
            rec.consumer is not None and core.dedupe.is_repeat(r.buyer, rec.consumer.e164, r.dedupe_days, now_ns)
        )
        _disengage(core, rec, "billable" if billable else "short", now_ns)
        core.finish(rec, "completed", now_ns)
        if core.settings.quality_signals:  # the publisher's short and clustered durations (exchange/quality.py)
            core.quality.completed(rec.publisher, duration, r.min_duration_s, now_ns)
        notices.append((r.buyer, CallNotice(call_id=rec.call_id, status="completed", duration_s=duration, billable=billable, charged_cents=rec.charged_cents)))
    else:  # failed: release this leg, move to the next route that can take the call
        _disengage(core, rec, "failed", now_ns)
        notices.append((r.buyer, CallNotice(call_id=rec.call_id, status="failed", duration_s=ev.duration_s)))
        win = engage(core, rec, rec.index + 1, now_ns, recheck=True)
        if win is None:
            core.finish(rec, "failed", now_ns)
        else:
            core.stats.fallbacks_used += 1
            notices.append(win)
    resp = event_response(rec)
    rec.events[key] = (ev, resp)
    return resp, notices


def event_response(rec: CallRecord) -> EventResponse:
    route = rec.route if rec.active else None
    return EventResponse(
        call_id=rec.call_id, status=rec.status, billable=rec.billable, charged_cents=rec.charged_cents,
        payout_cents=rec.payout_cents, route_index=rec.index,
        route=route_wire(route, from_ns(rec.expires_ns)) if route is not None and rec.expires_ns is not None else None,
    )


def expire_due(core: Core, now_ns: int) -> list[Notice]:
    """Release every leg whose ``expires_at`` passed without an ending event."""
    notices: list[Notice] = []
    heap, active = core.expiring, core.active
    due = []
    while heap and heap[0][0] <= now_ns:
        ns, call_id = heappop(heap)
        rec = active.get(call_id)
        if rec is not None and rec.expires_ns == ns:  # (else it ended, or its instant moved: a stale entry)
            due.append(rec)
    for rec in due:
        r = rec.routes[rec.index]
        _disengage(core, rec, "failed", now_ns)
        rec.history.append((now_ns, "expired", rec.index))
        core.finish(rec, "expired", now_ns)
        notices.append((r.buyer, CallNotice(call_id=rec.call_id, status="failed")))
    return notices
