"""Domain events derived from audit records (billing.events): ids, order, addressees, and
what each addressee may see."""

from __future__ import annotations

import pytest

from billing import postings
from billing.audit import Chain
from billing.events import derive, event_id, parse_position, parties, position, select
from billing.records import AccountRow, AuditEvent, CallOutcome, HoldEvent
from billing.trail import account_audit, entry_audit, hold_audit, outcome_audit

NS = 1_000_000_000
T0 = 1_794_312_000 * NS


def _decision(call_id: str, publisher: str, buyers: list[str]) -> AuditEvent:
    routes = [{"buyer": b, "campaign": f"c-{b}", "destination": "+18005550199", "bid_cents": 3000, "price_cents": 3000 - i,
               "payout_cents": 2400, "margin_cents": 600, "min_duration_s": 60, "dedupe_days": 0} for i, b in enumerate(buyers)]
    decision = {"call_id": call_id, "decision": "routed" if buyers else "rejected", "reason": "ok" if buyers else "no_eligible_bid",
                "route": None, "fallbacks": [], "decision_us": 12}
    return AuditEvent(T0, "decision", call_id, "+14155550100", {
        "publisher": publisher, "request": {"caller": "+14155550100", "vertical": "auto"}, "decision": decision,
        "compliance": {}, "bids": [], "routes": routes})


def _event(call_id: str, publisher: str, buyer: str, kind: str) -> AuditEvent:
    return AuditEvent(T0 + NS, "event", call_id, None, {
        "key": "k", "event": {"event": kind, "duration_s": 90}, "response": {"call_id": call_id, "status": kind,
        "billable": True, "charged_cents": 3000, "payout_cents": 2400, "route_index": 0}, "route_index": 0, "status": kind,
        "billable": True, "charged_cents": 3000, "publisher": publisher, "buyer": buyer, "event_route": 0})


def _life() -> list[AuditEvent]:
    """Everything the exchange writes for two accounts and one billable call, as audit events."""
    charge = postings.charge("call_1", "b1", "p1", 3000, 2000, T0 + 2 * NS)
    return [
        account_audit(AccountRow("b1", "buyer", "Buyer One", "d1", 0, T0)),
        account_audit(AccountRow("p1", "publisher", "Pub One", "d2", 0, T0)),
        entry_audit(postings.deposit("buyer:b1", 100_000, "init", T0)),
        _decision("call_1", "p1", ["b1", "b2"]),
        hold_audit(HoldEvent("call_1", 0, "hold", "buyer:b1", 3000, T0)),
        _event("call_1", "p1", "b1", "connected"),
        _event("call_1", "p1", "b1", "completed"),
        entry_audit(charge),
        hold_audit(HoldEvent("call_1", 0, "capture", "buyer:b1", 3000, T0 + 2 * NS)),
        outcome_audit(CallOutcome("call_1", "p1", "b1", "c-b1", "completed", True, 3000, 3000, 2400, 600, T0, T0 + 2 * NS)),
        _decision("call_2", "p2", []),
    ]


def _rows():
    chain = Chain()
    return [(ev, chain.append(ev)) for ev in _life()]


def test_ids_are_unique_and_their_string_order_is_the_total_order():
    events = [e for _, row in _rows() for e in derive(row)]
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    assert all(parse_position(e.id) < parse_position(position(int(e.id[4:20]))) for e in events)
    assert parse_position(event_id(12, 3)) == (12, 3) and parse_position("0") == (0, 999)
    for bad in ("evt_1_2", "12", "evt_0000000000000001_1", "x" * 30):
        with pytest.raises(ValueError):
            parse_position(bad)


def test_a_billable_call_has_every_fact_of_its_life_and_money():
    types = [(e.type, e.account) for _, row in _rows() for e in derive(row)]
    for want in [("account.created", "b1"), ("money.deposited", "b1"), ("call.decided", "p1"), ("call.decided", "b1"),
                 ("call.decided", "b2"), ("money.held", "b1"), ("call.connected", "p1"), ("call.connected", "b1"),
                 ("call.completed", "p1"), ("call.completed", "b1"), ("money.charged", "b1"), ("money.payout", "p1"),
                 ("money.captured", "b1"), ("call.billable", "p1"), ("call.billable", "b1"), ("call.decided", "p2")]:
        assert want in types, want


def test_the_writer_indexes_every_addressee_of_every_record():
    for ev, row in _rows():
        addressed = {e.account for e in derive(row)} - {None}
        assert addressed <= set(parties(ev)), (ev.kind, addressed, parties(ev))


def test_each_tenant_sees_its_own_events_and_never_the_other_sides_money():
    rows = [row for _, row in _rows()]
    everything = select(rows, None, (0, 999), None, 10_000)
    for who in ("b1", "b2", "p1", "p2"):
        mine = select(rows, who, (0, 999), None, 10_000)
        assert mine and all(e.account == who for e in mine)
        assert [e for e in everything if e.account == who] == mine
    for e in select(rows, "b1", (0, 999), None, 10_000):
        assert "payout_cents" not in e.data and "margin_cents" not in e.data, e
    for e in select(rows, "p1", (0, 999), None, 10_000):
        assert "charged_cents" not in e.data and "price_cents" not in e.data, e
    assert all("caller" not in str(e.data) and "+1415" not in str(e.data) for e in everything)


def test_a_replay_from_any_position_is_the_rest_of_the_stream():
    rows = [row for _, row in _rows()]
    everything = select(rows, None, (0, 999), None, 10_000)
    for k, e in enumerate(everything):
        assert select(rows, None, parse_position(e.id), None, 10_000) == everything[k + 1:]
    only = select(rows, None, (0, 999), frozenset({"money.charged"}), 10)
    assert [e.type for e in only] == ["money.charged"] and only[0].data["amount_cents"] == 3000


def test_a_body_of_another_shape_addresses_nobody_and_does_not_fail_the_write():
    assert parties(AuditEvent(T0, "decision", "c", None, {"x": 1})) == ()
    assert parties(AuditEvent(T0, "event", "c", None, {"key": "k"})) == ()
    assert parties(AuditEvent(T0, "something", None, None, [1, 2])) == ()
