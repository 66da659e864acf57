"""What the audit trail records about calls, and how a restarted exchange gets them back.

Every routed call's decision and every applied event go on the audit trail in the same
writer batches as the money they move (``decision_audit``, ``event_audit``). An event record
carries its ``Idempotency-Key``, body and answer. So after a crash or a restart:

- a call whose hold is still open (routed or connected, not yet finished) is rebuilt from its
  decision and events and re-holds its price: the publisher's next event (or the replay of
  one whose answer was lost) is applied as if nothing happened;
- a replayed event of a call that already finished gets its recorded answer back;
- an open hold with no decision on record (cut between two batches) is released;
- the repeat-caller (dedupe) index is rebuilt from the billable calls of the last
  ``MAX_DEDUPE_DAYS`` (each one's buyer, from its outcome, and consumer, from its decision).

An outbound call's consumer gets the gate's call-level plan again (``Gate.screen`` at the
decision's instant, counting nothing), so a failed leg can still move to a fallback buyer,
each of which the per-buyer checks then judge as they stand now.

Once the saved book is back (``exchange.bookstore``), ``recount`` counts the calls delivered in
the current hour, day and month (and today's billable spend) into the caps and budgets of
their campaigns again, and ``retake`` puts each recovered leg's
concurrency slot and cap counts back on its campaign, counted in the current windows (a leg
begun in an earlier hour or day counts once more than it did: fail closed). A leg whose
campaign is not in the book holds its price but no slot.
"""

from __future__ import annotations

from typing import Any

import msgspec

from billing import keystore
from billing.audit import AuditRow
from billing.records import AuditEvent, HoldEvent
from billing.store import Store
from billing.vault import ERASED, Vault
from compliance.numbers import parse_number
from routing.dedupe import MAX_DEDUPE_DAYS, NS_PER_DAY
from routing.schedule import UTC, local_time

from routing.auction import PlannedRoute

from .accounts import Accounts
from .core import CallRecord, Core
from .replay import record as replay_record
from .quality import QualityEvidence
from .messages import CallEvent, CallFields, CallRequest, DecisionFields, EventResponse
from .settings import Settings

NS = 1_000_000_000
KEY_FIELD = "idempotency_key"  # a decision record's submission key (absent: the call had none)


def decision_audit(rec: CallRecord, key: str | None = None) -> AuditEvent:
    """The audit record of a decision: the request (with its ``Idempotency-Key`` if it had one),
    the compliance verdict with its evidence, the bids considered, the winner and price, and the
    routing plan."""
    body: dict[str, Any] = {} if key is None else {KEY_FIELD: key}
    return AuditEvent(rec.created_ns, "decision", rec.call_id, rec.consumer.e164 if rec.consumer is not None else None, {
        **body,
        "publisher": rec.publisher,
        "request": rec.request,
        "decision": rec.decision,
        "compliance": rec.evidence,
        **({"quality": rec.quality} if rec.quality is not None else {}),  # call quality signals, attestation (exchange/quality.py)
        "bids": [{"buyer": b, "campaign": c, "bid_cents": x, "live": live} for b, c, x, live in rec.bids],
        "routes": [r.record() for r in rec.routes],
        **({} if rec.replay is None else {"replay": replay_record(rec.replay)}),
    })


def event_audit(rec: CallRecord, key: str, ev: CallEvent, resp: EventResponse, now_ns: int) -> AuditEvent:
    """An applied event; ``publisher``, ``buyer`` and ``event_route`` (the route it is about)
    address its domain events (billing.events)."""
    leg = next((k for _, what, k in reversed(rec.history) if what == ev.event), rec.index)
    return AuditEvent(now_ns, "event", rec.call_id, None, {
        "key": key, "event": ev, "response": resp, "route_index": rec.index, "status": rec.status,
        "billable": rec.billable, "charged_cents": rec.charged_cents,
        "publisher": rec.publisher, "buyer": rec.routes[leg].buyer if leg < len(rec.routes) else None, "event_route": leg,
    })


def _body(row: AuditRow) -> dict[str, Any]:
    return msgspec.json.decode(row.body)


def rebuild(rows: list[AuditRow], hold: HoldEvent, now_ns: int, route_ttl_s: int, max_call_s: int) -> CallRecord | None:
    """The in-flight call ``hold`` belongs to, from its audit records (None: no decision)."""
    decision = next((_body(r) for r in rows if r.kind == "decision"), None)
    if decision is None or not decision.get("routes"):
        return None
    head = next(r for r in rows if r.kind == "decision")
    rec = CallRecord(hold.call_id, decision["publisher"], head.at_ns)
    request = msgspec.convert(decision["request"], CallRequest)
    rec.request = request
    rec.direction, rec.vertical = request.direction, request.vertical
    rec.consumer = parse_number(head.number) if head.number else None
    rec.caller = request.caller
    rec.state = request.state or (rec.consumer.state if rec.consumer is not None else None)
    rec.decision = msgspec.convert(decision["decision"], DecisionFields)
    rec.evidence = decision.get("compliance", {})
    rec.quality = msgspec.convert(decision["quality"], QualityEvidence) if decision.get("quality") else None
    rec.routes = tuple(PlannedRoute.from_record(r) for r in decision["routes"])
    rec.bids = tuple((b["buyer"], b["campaign"], b["bid_cents"], b["live"]) for b in decision.get("bids", ()))
    rec.index, rec.status = hold.route_index, "routed"
    rec.history.append((head.at_ns, "routed", 0))
    for r in rows:
        if r.kind != "event":
            continue
        body = _body(r)
        ev = msgspec.convert(body["event"], CallEvent)
        rec.events[body["key"]] = (ev, msgspec.convert(body["response"], EventResponse))
        rec.history.append((r.at_ns, ev.event, body["route_index"]))
        if body["route_index"] == hold.route_index:
            rec.status = "connected" if body["status"] == "connected" else rec.status
    rec.expires_ns = now_ns + (max_call_s if rec.status == "connected" else route_ttl_s) * NS
    return rec


async def restore(store: Store, core: Core, accounts: Accounts, settings: Settings, now: int,
                  vault: Vault | None = None, calls: bool = True) -> tuple[int, int, int]:
    """Load accounts, balances and replayable entries; bring back the calls in flight.
    Returns (accounts, calls recovered, holds released). With a ``vault``, the sealed numbers
    read back are opened (an erased number's calls keep no number: not in the repeat-caller
    index, no consumer). ``calls`` False (an edge node of a market, ``exchange.nodes``):
    accounts and balances only; the calls in flight and their holds are the seller's, never
    released by an edge."""
    from billing.postings import buyer_account

    snap = await store.load()
    ledger = core.ledger
    for a in snap.accounts:
        accounts.restore(a.id, a.kind, a.name, a.key_digest, a.credit_limit_cents)  # type: ignore[arg-type]
        if a.kind == "buyer":
            ledger.set_credit(buyer_account(a.id), a.credit_limit_cents)
    ledger.restore(snap.balances, snap.entries)
    if not calls:
        return len(snap.accounts), 0, 0
    repeat = await store.repeat_callers(now - MAX_DEDUPE_DAYS * NS_PER_DAY)
    numbers = await keystore.open_values(store, vault, [n for _, n, _ in repeat])
    for (buyer, _, at_ns), number in zip(repeat, numbers):
        if number and number != ERASED and not number.startswith("h1:"):
            core.dedupe.record(buyer, number, at_ns)
    s = settings
    recovered = released = 0
    for h in snap.open_holds:
        rows = await keystore.reveal(store, vault, await store.audit_query(h.call_id, None, None, None, limit=10_000))
        rec = rebuild(rows, h, now, s.route_ttl_s, s.max_call_s)
        if rec is None:
            ledger.outbox.append(HoldEvent(h.call_id, h.route_index, "release", h.account, h.amount_cents, now))
            released += 1
            continue
        if rec.direction == "outbound" and rec.consumer is not None:  # the gate's plan, for a fallback's per-buyer check
            rec.consumer, _ = core.gate.screen(rec.request, rec.consumer, rec.created_ns, rec.publisher, record=False)
        ledger.holds[h.call_id] = (h.account, h.amount_cents, h.route_index)
        ledger.held[h.account] = ledger.held.get(h.account, 0) + h.amount_cents
        core.calls[rec.call_id] = rec
        core.active[rec.call_id] = rec
        if rec.expires_ns is not None:
            core.expire_at(rec, rec.expires_ns)
        recovered += 1
    return len(snap.accounts), recovered, released


def recount(core: Core, legs: list[tuple[str, str, bool, int, int]], now_ns: int) -> int:
    """The delivered legs of the current windows back into their restored campaigns' caps and
    daily budgets (``Store.delivered_legs``; counted by when each ended); returns how many
    counted. Campaigns without hourly, daily or monthly caps or a budget are left alone."""
    n = 0
    book = core.book
    for buyer, campaign, billable, price, final_ns in legs:
        st = book.get(buyer, campaign)
        if st is None:
            continue
        lim = st.limits
        if lim.hourly is None and lim.daily is None and lim.monthly is None and lim.daily_budget_cents is None:
            continue
        zone = st.schedule.zone if st.schedule is not None else UTC
        st.capacity.recount(local_time(zone, now_ns), local_time(zone, final_ns), price, billable)
        n += 1
    return n


def retake(core: Core, now_ns: int) -> int:
    """The recovered legs' slots on their restored campaigns (see the module's docstring);
    returns how many were taken."""
    n = 0
    for rec in core.active.values():
        r = rec.route
        st = core.book.get(r.buyer, r.campaign) if r is not None and rec.taken is None else None
        if r is None or st is None:
            continue
        lt = core.clock.at(st.schedule.zone if st.schedule is not None else UTC, now_ns)
        rec.taken = (st.capacity, st.capacity.take(lt, r.price_cents))
        n += 1
    return n


async def recorded_answer(store: Store, publisher: str | None, call_id: str, key: str, ev: CallEvent) -> EventResponse | None:
    """The recorded answer to a replayed event of a call no longer in memory (None: none).
    Raises LookupError when the call is known to have finished (a new event is too late)."""
    rows = await store.audit_query(call_id, None, None, None, limit=10_000)
    decision = next((_body(r) for r in rows if r.kind == "decision"), None)
    if decision is None or (publisher is not None and decision["publisher"] != publisher):
        return None
    for r in rows:
        if r.kind == "event":
            body = _body(r)
            if body["key"] == key:
                if msgspec.convert(body["event"], CallEvent) != ev:
                    raise ValueError("this Idempotency-Key was used with a different body")
                return msgspec.convert(body["response"], EventResponse)
    raise LookupError(call_id)


async def recorded_keys(store: Store, since_ns: int) -> dict[tuple[str, str], str]:
    """(publisher, Idempotency-Key) -> call id of every keyed decision recorded since
    ``since_ns``: what the call desk's key index is rebuilt from at start. Only the key and the
    publisher are read (the database extracts them; bodies stay there)."""
    if store.backend == "postgres":
        pub, key = "body::jsonb->>'publisher'", f"body::jsonb->>'{KEY_FIELD}'"
    else:
        pub, key = "json_extract(body, '$.publisher')", f"json_extract(body, '$.{KEY_FIELD}')"
    rows = await store.fetch(
        f"SELECT call_id, {pub}, {key} FROM audit WHERE kind = 'decision' AND at_ns >= ? AND body LIKE ?",
        since_ns, f'%"{KEY_FIELD}":"%')
    return {(p, k): c for c, p, k in rows if p is not None and k is not None}


async def recorded_decision(store: Store, publisher: str, call_id: str, call: CallFields,
                            vault: Vault | None = None) -> DecisionFields | None:
    """The recorded decision of a keyed call no longer in memory (None: not on record).
    Raises ValueError when ``call`` is not the body the key was first used with (a number
    erased since is compared by its blind index)."""
    stored = await store.audit_query(call_id, None, None, None, limit=10)
    rows = await keystore.reveal(store, vault, stored)
    decision = next((_body(r) for r in rows if r.kind == "decision"), None)
    if decision is None or decision["publisher"] != publisher:
        return None
    recorded = msgspec.convert(decision["request"], type(call))
    if vault is not None:  # a number erased since: the consumer's is compared by its blind index
        head = next(r for r in stored if r.kind == "decision")
        consumer = "callee" if recorded.direction == "outbound" else "caller"
        same = {}
        for f in ("caller", "callee"):
            given = getattr(call, f)
            if getattr(recorded, f) == ERASED and given and (f != consumer or head.number == vault.blind(given)):
                same[f] = given
        if same:
            recorded = msgspec.structs.replace(recorded, **same)
    if recorded != call:
        raise ValueError("this Idempotency-Key was used with a different body")
    return msgspec.convert(decision["decision"], DecisionFields)
