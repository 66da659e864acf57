"""The gate as the exchange runs it: call level + per buyer, fail closed, evidence, retry."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from compliance.check import decide_case, load_state
from compliance.dncarray import EMPTY, from_keys
from compliance.gate import Gate, Verdict
from compliance.instants import parse_rfc3339, rfc3339, utc_day
from compliance.numbers import parse_number
from compliance.rules import default_rules
from compliance.stores import NumberList
from exchange.messages import CallRequest
from tests.builders import World, call, campaign

GOLDEN = Path(__file__).resolve().parent / "golden.jsonl"
CASES = [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines()]
NOON = parse_rfc3339("2026-04-15T16:00:00Z")
NY = "+12127365000"


def split_verdict(case: dict) -> tuple[bool, str]:
    """What the exchange decides for the case's buyer: call level, then that buyer."""
    c = case["call"]
    gate = Gate(rules=default_rules(), stores=load_state(case["state"]))
    fields = SimpleNamespace(direction=c["direction"], consent_token=c.get("consent_token"), vertical=c.get("vertical"),
                             origin=c.get("origin"), dial_mode=c.get("dial_mode"), state=None, zip=None)
    at = parse_rfc3339(c["at_utc"])
    if at is None or c["direction"] not in ("inbound", "outbound"):
        return False, "invalid_request"
    number = parse_number(c["caller"] if c["direction"] == "inbound" else c["callee"])
    consumer, v = gate.screen(fields, number, at)
    if not v.allow:
        return False, v.reason
    why = gate.buyer_refusal(c["buyer"], consumer, c["direction"], at, c.get("campaign"))
    return (why is None), (v.reason if why is None else why)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_exchange_split_agrees_with_the_single_buyer_gate(case):
    full, _ = decide_case(case)
    assert split_verdict(case) == (full.allow, full.reason)


def stores_with(**state):
    base = {"national_dnc": {"snapshot_date": "2026-04-10", "numbers": {}}}
    base.update(state)
    return load_state(base)


def test_any_exception_in_a_store_denies_with_internal_error():
    st = stores_with()

    class Broken:
        def has(self, e164):
            raise RuntimeError("disk gone")

    st.litigators = Broken()  # type: ignore[assignment]
    gate = Gate(rules=default_rules(), stores=st)
    v = gate.decide("outbound", NY, NOON, buyer="b", vertical="v", consent_token="t")
    assert v == Verdict(False, "internal_error")
    fields = SimpleNamespace(direction="outbound", consent_token="t", vertical="v", origin=None, dial_mode=None, state=None, zip=None)
    assert gate.check("outbound", parse_number(NY), NOON, fields).reason == "internal_error"


def test_buyer_refusal_without_a_screened_consumer_fails_closed():
    gate = Gate()
    assert gate.buyer_refusal("b", parse_number(NY), "outbound", NOON) == "internal_error"
    assert gate.buyer_refusal("b", parse_number(NY), "inbound", NOON) is None


def test_buyer_refusal_rechecks_opt_outs_and_revocations_after_screening():
    st = stores_with(consents={"t": {"phone": NY, "sellers": ["b1", "b2"], "created_at": "2026-04-14T00:00:00Z"}})
    gate = Gate(stores=st)
    fields = SimpleNamespace(direction="outbound", consent_token="t", vertical="v", origin=None, dial_mode=None, state=None, zip=None)
    consumer, v = gate.screen(fields, parse_number(NY), NOON)
    assert v.allow and gate.buyer_refusal("b1", consumer, "outbound", NOON) is None
    assert gate.buyer_refusal("b3", consumer, "outbound", NOON) == "consent_seller_mismatch"
    st.suppressions.add(NY, "buyer:b2", NOON + 1)
    assert gate.buyer_refusal("b2", consumer, "outbound", NOON + 5) == "internal_dnc"  # a fallback leg later on
    st.consents.revoke("t", NOON + 2)
    assert gate.buyer_refusal("b1", consumer, "outbound", NOON + 5) == "consent_revoked"


def test_retry_after_is_the_next_instant_every_window_opens():
    gate = Gate(stores=stores_with(consents={"t": {"phone": "+18504321234", "sellers": ["b"], "created_at": "2026-04-14T00:00:00Z"}}))
    # Friday 2026-04-17 20:30 EDT in the 850 split (FL): next open is Saturday 08:00 CDT = 09:00 EDT
    v = gate.decide("outbound", "+18504321234", parse_rfc3339("2026-04-18T00:30:00Z"), buyer="b", vertical="v", consent_token="t")
    assert (v.reason, v.rule, rfc3339(v.retry_after_ns)) == ("outside_calling_hours", "FL", "2026-04-18T13:00:00Z")


def test_retry_after_skips_banned_days_and_holidays():
    al = "+12055551234"
    st = stores_with(consents={"t": {"phone": al, "sellers": ["b"], "created_at": "2026-04-14T00:00:00Z"}},
                     state_holidays={"AL": ["2026-04-20"]})
    gate = Gate(stores=st)
    v = gate.decide("outbound", al, parse_rfc3339("2026-04-19T17:00:00Z"), buyer="b", vertical="v", consent_token="t")
    assert v.reason == "state_day_restriction" and rfc3339(v.retry_after_ns) == "2026-04-21T13:00:00Z"  # Tue 08:00 CDT


def test_frequency_retry_waits_for_the_oldest_counted_call_to_age_out():
    fl = "+13053581234"
    st = stores_with(consents={"t": {"phone": fl, "sellers": ["b"], "created_at": "2026-04-14T00:00:00Z"}},
                     prior_calls=[{"consumer": fl, "direction": "outbound", "at_utc": t, "vertical": "v"}
                                  for t in ("2026-04-15T13:00:00Z", "2026-04-15T14:00:00Z", "2026-04-15T15:00:00Z")])
    gate = Gate(stores=st)
    v = gate.decide("outbound", fl, NOON, buyer="b", vertical="v", consent_token="t")
    assert v.reason == "state_frequency_limit" and rfc3339(v.retry_after_ns) == "2026-04-16T13:00:01Z"


def test_in_process_counter_allows_three_then_denies():
    fl = "+13053581234"
    gate = Gate(stores=stores_with(consents={"t": {"phone": fl, "sellers": ["b"], "created_at": "2026-04-14T00:00:00Z"}}))
    got = [gate.decide("outbound", fl, NOON + i, buyer="b", vertical="v", consent_token="t").reason for i in range(5)]
    assert got == ["ok", "ok", "ok", "state_frequency_limit", "state_frequency_limit"]
    later = gate.decide("outbound", fl, NOON + 24 * 3600 * 10**9 + 1, buyer="b", vertical="v", consent_token="t")
    assert later.reason == "ok"


def test_shared_counter_mode_leaves_the_cap_to_the_awaited_step():
    fl = "+13053581234"
    gate = Gate(stores=stores_with(consents={"t": {"phone": fl, "sellers": ["b"], "created_at": "2026-04-14T00:00:00Z"}}))
    gate.shared_frequency = True
    fields = SimpleNamespace(direction="outbound", consent_token="t", vertical="v", origin=None, dial_mode=None, state=None, zip=None)
    _, v = gate.screen(fields, parse_number(fl), NOON)
    assert v.allow and v.pending is not None and v.pending.cap == 3 and v.pending.rule == "FL"
    denied = gate.frequency_denied(v, NOON + 3600 * 10**9)
    assert denied.reason == "state_frequency_limit" and denied.rule == "FL" and denied.retry_after_ns >= NOON + 3600 * 10**9
    _, ny = gate.screen(fields, parse_number(NY), NOON)  # no cap in NY: nothing to await
    assert ny.pending is None


def test_the_call_state_joins_the_candidates():
    gate = Gate(stores=stores_with(consents={"t": {"phone": NY, "sellers": ["b"], "created_at": "2026-04-14T00:00:00Z"}}))
    fields = SimpleNamespace(direction="outbound", consent_token="t", vertical="v", origin=None, dial_mode=None, state="FL", zip=None)
    at = parse_rfc3339("2026-04-16T00:30:00Z")  # 20:30 EDT
    _, v = gate.screen(fields, parse_number(NY), at)
    assert (v.reason, v.rule) == ("outside_calling_hours", "FL")


# ---------------------------------------------------------------------------- through the pipeline
def compliant(world: World) -> None:
    world.core.gate.stores.swap(national=NumberList(EMPTY, utc_day(world.clock.now_ns()), "national:test"))


def test_pipeline_rejects_with_retry_after_and_evidence(world: World):
    world.place("b1", campaign("a", bid_cents=3000, accepts_outbound=True))
    compliant(world)
    world.clock.t = parse_rfc3339("2026-04-16T01:30:00Z")  # 21:30 EDT
    token = world.consent(NY, "b1")
    rec, _ = world.submit(call("+18885550100", direction="outbound", callee=NY, consent_token=token))
    assert rec.decision.reason == "outside_calling_hours" and rec.decision.retry_after_utc is not None
    assert rec.decision.retry_after_utc.isoformat() == "2026-04-16T12:00:00+00:00"
    assert rec.evidence["retry_after_utc"] == "2026-04-16T12:00:00Z" and rec.evidence["npa_table"].startswith("npa-")
    assert rec.evidence["dnc_snapshot_date"] == "2026-04-15"


def test_pipeline_consent_names_the_winning_buyer_only(world: World):
    world.place("b1", campaign("a", bid_cents=3000, accepts_outbound=True))
    world.place("b2", campaign("b", bid_cents=2000, accepts_outbound=True))
    token = world.consent(NY, "b2")
    rec, _ = world.submit(call("+18885550100", direction="outbound", callee=NY, consent_token=token))
    assert rec.decision.decision == "routed" and rec.decision.route.buyer == "b2"


def test_pipeline_abandonment_breaker_skips_that_campaign(world: World):
    from compliance.stores import Flags

    world.place("b1", campaign("a", bid_cents=3000, accepts_outbound=True))
    world.place("b2", campaign("b", bid_cents=2000, accepts_outbound=True))
    world.core.gate.stores.swap(flags=Flags("f1", abandon_campaigns=frozenset({"a"})))
    token = world.consent(NY, "b1", "b2")
    rec, _ = world.submit(call("+18885550100", direction="outbound", callee=NY, consent_token=token))
    assert rec.decision.route.campaign == "b"


def test_inbound_inquiry_lets_that_buyer_call_back_manually_despite_the_registry(world: World):
    world.place("b1", campaign("a", bid_cents=3000, accepts_outbound=True))
    gate = world.core.gate
    gate.stores.swap(national=NumberList(from_keys([2127365000]), utc_day(world.clock.now_ns()), "national:test"))
    rec, _ = world.submit(call(NY))
    assert rec.decision.decision == "routed"
    gate.note_inquiry(rec.direction, rec.consumer, rec.route.buyer, world.clock.now_ns())  # what the service does
    world.clock.advance(3600)
    cb = CallRequest(caller="+18885550100", callee=NY, direction="outbound", vertical="auto_insurance", origin="callback", dial_mode="manual")
    again, _ = world.submit(cb)
    assert again.decision.decision == "routed"
    auto = CallRequest(caller="+18885550100", callee=NY, direction="outbound", vertical="auto_insurance", origin="callback")
    denied, _ = world.submit(auto)
    assert denied.decision.reason == "national_dnc"


def test_a_manual_callback_no_buyer_had_an_inquiry_from_is_refused_at_the_gate(world: World):
    """Steps 10-11 excuse a manual callback only for a buyer the consumer made an inquiry to: with
    none to any buyer the call is refused as a whole (an empty auction), not campaign by campaign."""
    for b in range(1, 6):
        for c in range(20):
            world.place(f"b{b}", campaign(f"c{c}", bid_cents=1000 + 10 * c, accepts_outbound=True))
    compliant(world)
    cb = CallRequest(caller="+18885550100", callee=NY, direction="outbound", vertical="auto_insurance", origin="callback", dial_mode="manual")
    popped = world.core.book.popped
    rec, _ = world.submit(cb)
    assert (rec.decision.decision, rec.decision.reason, rec.decision.rule) == ("rejected", "consent_missing", "federal")
    assert world.core.book.popped == popped  # no campaign walked
    assert rec.replay is not None and rec.replay.refused == () and rec.replay.bids == ()
    gate = world.core.gate
    gate.stores.swap(national=NumberList(from_keys([2127365000]), utc_day(world.clock.now_ns()), "national:test"))
    assert world.submit(cb)[0].decision.reason == "national_dnc"
    # an inquiry to one buyer: that buyer (only) may call back
    inbound, _ = world.submit(call(NY))
    gate.note_inquiry(inbound.direction, inbound.consumer, "b2", world.clock.now_ns())
    world.clock.advance(60)
    again, _ = world.submit(cb)
    assert again.decision.decision == "routed" and again.decision.route.buyer == "b2"
    # ... until the relationship lapses (policy.ebr_inquiry_days)
    world.clock.advance(91 * 86_400)
    gate.stores.swap(national=NumberList(from_keys([2127365000]), utc_day(world.clock.now_ns()), "national:test"))
    assert world.submit(cb)[0].decision.reason == "national_dnc"
