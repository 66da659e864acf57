"""The auction replay: what a decision records, and each reader's view of it."""

from __future__ import annotations

import msgspec

from exchange.messages import Schedule
from exchange.replay import LIST_OFF, record, view
from tests.builders import World, call, campaign

MONDAY_ONLY = Schedule(tz="America/New_York", hours={"mon": [("09:00", "17:00")]})


def _view(rec, buyer=None):
    d = rec.decision
    routes = [(r.buyer, r.campaign, r.bid_cents, r.price_cents) for r in rec.routes]
    bids = [(b, c, x) for b, c, x, _ in rec.replay.bids]
    # through the audit record's encoding, as a call no longer in memory is replayed
    rep = msgspec.json.decode(msgspec.json.encode(record(rec.replay)))
    return view(rec.call_id, d.decision, d.reason, rep, bids, routes, buyer)


def _market() -> World:
    w = World(max_fallbacks=0, pricing="second")
    w.place("b1", campaign("top", bid_cents=3000))
    w.place("b2", campaign("second", bid_cents=2500))
    w.place("b3", campaign("elsewhere", bid_cents=2800, area_codes=[415]))  # walked: above the runner-up, wrong area code
    w.place("b4", campaign("monday", bid_cents=5000, schedule=MONDAY_ONLY))  # parked on arrival: closed on Wednesday
    w.place("b5", campaign("broke", bid_cents=4000), funds=None)  # parked on arrival: no funds
    w.place("b6", campaign("resting", bid_cents=6000, paused=True))
    w.place("b7", campaign("cheap", bid_cents=100))  # never reached: ranked below the runner-up
    return w


def test_operator_sees_every_candidate_with_its_outcome_and_reason():
    w = _market()
    rec, _ = w.submit(call(caller="+12125550100"))
    v = _view(rec)
    got = {(c["buyer"], c["campaign"]): (c["outcome"], c.get("reason")) for c in v["candidates"]}
    assert got == {
        ("b1", "top"): ("won", None),
        ("b2", "second"): ("outbid", None),
        ("b3", "elsewhere"): ("ineligible", "area_code"),
        ("b4", "monday"): ("ineligible", "schedule"),
        ("b5", "broke"): ("ineligible", "funds"),
        ("b6", "resting"): ("ineligible", "paused"),
    }
    assert v["ineligible_counts"] == {"area_code": 1, "funds": 1, "paused": 1, "schedule": 1}
    assert v["clearing_price_cents"] == 2501 and v["pricing"] == "second" and v["floor_cents"] == 0
    assert v["candidates"][0]["price_cents"] == 2501
    assert "ineligible_unlisted" not in v


def test_a_buyer_sees_its_own_candidates_and_the_clearing_price_only():
    w = _market()
    rec, _ = w.submit(call(caller="+12125550100"))
    v = _view(rec, buyer="b4")
    assert v["candidates"] == [{"buyer": "b4", "campaign": "monday", "bid_cents": 5000, "outcome": "ineligible", "reason": "schedule"}]
    assert v["ineligible_counts"] == {"schedule": 1}
    assert v["clearing_price_cents"] == 2501
    assert _view(rec, buyer="b7") is None  # never a candidate: not its call to read
    assert _view(rec, buyer="nobody") is None


def test_a_call_nobody_could_take_says_why():
    """The README's old trap: a Monday-only campaign and a call on Wednesday."""
    w = World()
    w.place("b1", campaign("c1", schedule=MONDAY_ONLY))
    rec, _ = w.submit()
    assert rec.decision.reason == "no_eligible_bid"
    v = _view(rec)
    assert v["candidates"] == [{"buyer": "b1", "campaign": "c1", "bid_cents": 2500, "outcome": "ineligible", "reason": "schedule"}]
    assert v["clearing_price_cents"] is None and v["decision"] == "rejected"


def test_below_floor_and_fallbacks():
    w = World(max_fallbacks=1)
    for i, bid in enumerate((3000, 2000, 1500, 900)):
        w.place(f"b{i}", campaign(f"c{i}", bid_cents=bid))
    rec, _ = w.submit(call(floor_cents=1000))
    got = [(c["campaign"], c["outcome"]) for c in _view(rec)["candidates"]]
    assert got[:2] == [("c0", "won"), ("c1", "fallback")]
    assert ("c2", "outbid") in got


def test_many_parked_campaigns_are_counted_not_listed():
    w = World()
    w.place("b1", campaign("open", bid_cents=100))
    n = LIST_OFF * 3
    for i in range(n):
        w.place(f"s{i}", campaign(f"closed{i}", bid_cents=5000, schedule=MONDAY_ONLY))
    rec, _ = w.submit()
    v = _view(rec)
    assert v["ineligible_counts"] == {"schedule": n}
    assert v["ineligible_unlisted"] == n
    assert [c["campaign"] for c in v["candidates"]] == ["open"]


def test_counts_follow_campaigns_back_into_the_index():
    w = World()
    w.place("b1", campaign("c1", bid_cents=3000, paused=True))
    w.place("b2", campaign("c2", bid_cents=2000), funds=None)
    assert _view(w.submit()[0])["ineligible_counts"] == {"funds": 1, "paused": 1}
    w.core.book.set_paused("b1", "c1", False)
    w.fund("b2")
    rec, _ = w.submit()
    v = _view(rec)
    assert v["ineligible_counts"] == {}
    assert [(c["campaign"], c["outcome"]) for c in v["candidates"]] == [("c1", "won"), ("c2", "fallback")]
    for b in w.core.book._classes.values():
        assert not b.out.by_state and not b.out.members


def test_a_wide_campaign_filtered_by_state_is_ineligible_for_state():
    w = World()
    many = ["CA", "TX", "FL", "NV", "OR", "WA", "AZ", "UT", "CO"]  # wide: more than WIDE_STATES, not NY
    w.place("b1", campaign("west", bid_cents=4000, states=many))
    w.place("b2", campaign("ny", bid_cents=1000))
    v = _view(w.submit(call(caller="+12125550100"))[0])
    assert {c["campaign"]: c.get("reason") for c in v["candidates"]} == {"ny": None, "west": "state"}
    # parked, it is counted under its own states only
    w.core.book.set_paused("b1", "west", True)
    v = _view(w.submit(call(caller="+12125550100"))[0])
    assert v["ineligible_counts"] == {}
    v = _view(w.submit(call(caller="+14155550100"))[0])
    assert v["ineligible_counts"] == {"paused": 1}


def test_compliance_rejection_has_an_empty_auction():
    w = World()
    w.place("b1", campaign("c1"))
    rec, _ = w.submit(call(caller="+12125550100", direction="outbound", callee="+12125550111"))  # no consent
    assert rec.decision.decision == "rejected"
    v = _view(rec)
    assert v["candidates"] == [] and v["ineligible_counts"] == {}


def test_recording_off_records_nothing():
    w = World(auction_replay=False)
    w.place("b1", campaign("c1"))
    rec, _ = w.submit()
    assert rec.status == "routed" and rec.replay is None


def test_live_bidders_won_timed_out_or_were_not_asked():
    from exchange.messages import RtbBid
    from exchange.pipeline import decide, prepare

    w = World(rtb_tmax_ms=80)
    w.place("b1", campaign("standing", bid_cents=2000))
    w.place("b2", campaign("live", bid_cents=0, rtb=True))
    w.place("b3", campaign("silent", bid_cents=0, rtb=True))
    w.place("b4", campaign("west", bid_cents=0, rtb=True, area_codes=[415]))  # not asked: the caller is in 212
    w.place("b5", campaign("late_refusal", bid_cents=0, rtb=True))
    now = w.clock.now_ns()
    p = prepare(w.core, call(), "p1", "callX", now)
    reqs = {req.campaign: req for _, req in p.bid_requests}
    assert set(reqs) == {"live", "silent", "late_refusal"}
    answers = {}
    for cid, cents in (("live", 3100), ("late_refusal", 500_000_000)):  # more than its buyer's funds: refused at decision
        a = RtbBid(request_id=reqs[cid].request_id, bid_cents=cents)
        answers[a.request_id] = (a, w.core.book.next_seq())
    rec, _ = decide(w.core, p, answers, now)
    v = _view(rec)
    got = {c["campaign"]: (c["outcome"], c.get("reason"), c.get("bid_cents")) for c in v["candidates"]}
    assert got == {
        "live": ("won", None, 3100),
        "standing": ("fallback", None, 2000),
        "silent": ("timeout", None, None),
        "west": ("ineligible", "area_code", None),
        "late_refusal": ("ineligible", "funds", 500_000_000),
    }
    assert v["ineligible_counts"] == {"area_code": 1, "funds": 1}


def test_walked_refusals_past_the_listing_bound_are_counted_not_listed():
    from exchange.replay import LIST_REFUSED

    w = World()
    w.place("b0", campaign("open", bid_cents=100))
    n = LIST_REFUSED + 36
    for i in range(n):  # the top of the book: campaigns no 212 caller can reach, walked by every call
        w.place(f"far{i}", campaign(f"c{i}", bid_cents=5000 + i, area_codes=[415]))
    rec, _ = w.submit()
    assert rec.decision.route.campaign == "open"
    v = _view(rec)
    assert v["ineligible_counts"] == {"area_code": n}
    assert v["ineligible_unlisted"] == 36
    assert sum(c["outcome"] == "ineligible" for c in v["candidates"]) == LIST_REFUSED
    assert len(rec.replay.refused) == LIST_REFUSED
