"""STIR/SHAKEN: a call's attestation, a campaign's min_attestation and its bid modifiers, over
the pure core (manual clock), and the wire's refusals of malformed values with their paths."""

from __future__ import annotations

import pytest

from exchange.codec import decode_body
from exchange.errors import Refused
from exchange.messages import CallRequest, Campaign, publisher_json_one
from exchange.modifiers import AttestationModifiers, BidModifiers
from routing.attestation import adjusted, compile_multipliers, level_of, multiplier_text
from tests.builders import World, call, campaign


def mods(**kw: float) -> BidModifiers:
    return BidModifiers(attestation=AttestationModifiers(**kw))


def test_levels_order_a_b_c_and_unattested_lowest():
    assert level_of("A") > level_of("B") > level_of("C") > level_of(None) == 0


def test_a_campaign_with_min_attestation_b_passes_over_a_c_call_with_reason_attestation():
    w = World(pricing="first")
    w.place("b1", campaign("strict", bid_cents=3000, min_attestation="B"))
    rec, _ = w.submit(call(attestation="C"))
    assert rec.decision.decision == "rejected" and rec.decision.reason == "attestation"
    assert rec.quality.attestation == "C" and rec.quality.skipped == {"attestation": 1}
    rec, _ = w.submit(call("+12125550111"))  # unattested: below C
    assert rec.decision.reason == "attestation"
    rec, _ = w.submit(call("+12125550122", attestation="A"))
    assert rec.decision.decision == "routed" and rec.decision.route.campaign == "strict"


def test_a_lower_campaign_takes_the_call_a_stricter_one_refuses():
    w = World(pricing="first")
    w.place("b1", campaign("strict", bid_cents=3000, min_attestation="A"))
    w.place("b2", campaign("open", bid_cents=1000))
    rec, _ = w.submit(call(attestation="B"))
    assert rec.decision.route.campaign == "open" and rec.routes[0].price_cents == 1000
    assert rec.quality.skipped == {"attestation": 1}


def test_the_modifier_applies_before_ranking_rounded_down_to_the_cent():
    w = World(pricing="first")
    w.place("b1", campaign("discounts_c", bid_cents=3001, bid_modifiers=mods(C=0.5)))  # a C call: 1500.5 -> 1500
    w.place("b2", campaign("flat", bid_cents=2000))
    rec, _ = w.submit(call(attestation="C"))
    assert [(r.campaign, r.bid_cents) for r in rec.routes] == [("flat", 2000), ("discounts_c", 1500)]
    assert rec.quality.adjusted == [("b1", "discounts_c", 3001, 1500, "0.5")]
    rec, _ = w.submit(call("+12125550111", attestation="A"))  # no modifier for A: the full bid
    assert [(r.campaign, r.bid_cents) for r in rec.routes] == [("discounts_c", 3001), ("flat", 2000)]


def test_second_price_clears_on_the_modified_bids():
    w = World(pricing="second")
    w.place("b1", campaign("x", bid_cents=4000, bid_modifiers=mods(B=0.8)))  # a B call: 3200
    w.place("b2", campaign("y", bid_cents=3000))
    rec, _ = w.submit(call(attestation="B"))
    assert rec.routes[0].campaign == "x" and rec.routes[0].price_cents == 3001  # runner-up + 1, not above 3200
    assert rec.routes[1].campaign == "y" and rec.routes[1].price_cents == 0  # no runner-up: the floor
    w2 = World(pricing="second")
    w2.place("b1", campaign("x", bid_cents=4000, bid_modifiers=mods(B=0.7)))  # a B call: 2800
    w2.place("b2", campaign("y", bid_cents=3000))
    rec, _ = w2.submit(call(attestation="B"))
    assert rec.routes[0].campaign == "y" and rec.routes[0].price_cents == 2801


def test_an_unattested_call_takes_the_lowest_modifier_unless_its_own_is_given():
    assert compile_multipliers(AttestationModifiers(B=0.8, C=0.5)) == (5000, 5000, 8000, 10_000)
    assert compile_multipliers(AttestationModifiers(C=0.5, unattested=0.25)) == (2500, 5000, 10_000, 10_000)
    assert compile_multipliers(AttestationModifiers(A=1.0)) is None  # nothing to adjust: the fast path
    assert compile_multipliers(None) is None
    w = World(pricing="first")
    w.place("b1", campaign("m", bid_cents=1999, bid_modifiers=mods(B=0.8, C=0.5)))
    rec, _ = w.submit(call())
    assert rec.routes[0].bid_cents == 999 and rec.quality.attestation == "unattested"


def test_a_floor_applies_to_the_modified_bid():
    w = World(pricing="first")
    w.place("b1", campaign("m", bid_cents=2000, bid_modifiers=mods(C=0.5)))
    rec, _ = w.submit(call(attestation="C", floor_cents=1500))
    assert rec.decision.reason == "below_floor"


def test_arithmetic_is_exact_integer_cents():
    m = compile_multipliers(AttestationModifiers(C=0.29))
    assert adjusted(100, m, 1) == 29  # 100 * 0.29 is 28.999999999999996 in floats
    assert adjusted(12345, m, 1) == 3580  # 3580.05 rounded down
    assert multiplier_text(m, 1) == "0.29" and multiplier_text(m, 3) == "1"


CAMPAIGN = b'{"id":"c","vertical":"v","bid_cents":100,"min_duration_s":1,"destination":"+18005550199",'


@pytest.mark.parametrize("body, path, words", [
    (b'"bid_modifiers":{"attestation":{"B":1.5}}}', "$.bid_modifiers.attestation.B", "never raise a bid"),
    (b'"bid_modifiers":{"attestation":{"C":-0.1}}}', "$.bid_modifiers.attestation.C", "at least"),
    (b'"bid_modifiers":{"attestation":{"C":0.12345}}}', "$.bid_modifiers.attestation.C", "4 decimal places"),
    (b'"bid_modifiers":{"attestation":{"C":"half"}}}', "$.bid_modifiers.attestation.C", "number"),
    (b'"bid_modifiers":{"attestation":{"D":0.5}}}', "$.bid_modifiers.attestation.D", "unknown field"),
    (b'"bid_modifiers":{"stir":{"C":0.5}}}', "$.bid_modifiers.stir", "unknown field"),
    (b'"min_attestation":"D"}', "$.min_attestation", "A, B, C"),
    (b'"max_publisher_risk":101}', "$.max_publisher_risk", "at most 100"),
])
def test_malformed_campaign_quality_fields_are_refused_with_their_path(body, path, words):
    with pytest.raises(Refused) as got:
        decode_body(CAMPAIGN + body, Campaign)
    assert got.value.code == "invalid_message" and got.value.path == path, got.value.message
    assert words in got.value.message


def test_a_malformed_attestation_on_a_call_is_refused_with_its_path_on_http_and_the_socket():
    for raw in (b'{"caller":"+12125550100","vertical":"v","attestation":"a"}', b'{"caller":"+12125550100","vertical":"v","attestation":1}'):
        with pytest.raises(Refused) as got:
            decode_body(raw, CallRequest)
        assert got.value.path == "$.attestation"
    msg = publisher_json_one.decode(b'{"type":"call","caller":"+12125550100","vertical":"v","attestation":"B","seq":1}')
    assert msg.attestation == "B"


def test_live_bidders_see_the_attestation_in_their_bid_request():
    from exchange.pipeline import prepare

    w = World(rtb_tmax_ms=50)
    w.place("b1", campaign("live", rtb=True))
    w.place("b2", campaign("live_strict", rtb=True, min_attestation="A"))
    p = prepare(w.core, call(attestation="B"), "p1", "c1", w.clock.now_ns())
    assert [(b, r.campaign, r.call.attestation) for b, r in p.bid_requests] == [("b1", "live", "B")]
    assert p.skipped == {"attestation": 1}
