"""The call pipeline and lifecycle over the pure core (no sockets, manual clock)."""

from billing.postings import EXCHANGE_REVENUE, buyer_account, publisher_account
from exchange.messages import Caps, RtbBid, Schedule
from exchange.pipeline import prepare
from tests.builders import NOON_NY_NS, World, call, campaign


def test_call_routes_to_highest_bid_with_fallbacks_in_price_order(world: World):
    world.place("b1", campaign("low", bid_cents=1000))
    world.place("b2", campaign("high", bid_cents=3000))
    world.place("b3", campaign("mid", bid_cents=2000))
    rec, notices = world.submit()
    d = rec.decision
    assert d.decision == "routed" and d.reason == "ok"
    assert d.route.campaign == "high" and d.route.buyer == "b2"
    assert [r.campaign for r in d.fallbacks] == ["mid", "low"]
    assert d.route.payout_cents == 2400  # 3000 less the 20 % take
    kinds = {(buyer, type(m).__name__) for buyer, m in notices}
    assert kinds == {("b2", "Win"), ("b3", "Loss"), ("b1", "Loss")}


def test_one_route_per_buyer(world: World):
    world.place("b1", campaign("a", bid_cents=3000))
    world.place("b1", campaign("b", bid_cents=2900))
    world.place("b2", campaign("c", bid_cents=1000))
    rec, _ = world.submit()
    assert [r.buyer for r in rec.routes] == ["b1", "b2"]


def test_no_campaign_means_no_eligible_bid_and_floor_rejects(world: World):
    rec, _ = world.submit()
    assert rec.decision.reason == "no_eligible_bid"
    world.place("b1", campaign("a", bid_cents=500))
    rec, notices = world.submit(call(floor_cents=600))
    assert rec.decision.decision == "rejected" and rec.decision.reason == "below_floor"
    assert notices and notices[0][1].reason == "below_floor"


def test_targeting_vertical_state_and_area_code(world: World):
    world.place("b1", campaign("ny_only", bid_cents=3000, states=["NY"], area_codes=[718]))
    world.place("b2", campaign("health", vertical="health", bid_cents=9000))
    world.place("b3", campaign("ca", bid_cents=1000, states=["CA"]))
    rec, _ = world.submit(call("+12125550100"))  # NY, area code 212
    assert rec.decision.reason == "no_eligible_bid"
    rec, _ = world.submit(call("+17185550100"))  # NY, area code 718
    assert rec.decision.route.campaign == "ny_only"
    rec, _ = world.submit(call("+14155550100"))  # CA
    assert rec.decision.route.campaign == "ca"


def test_schedule_in_the_campaigns_own_time_zone(world: World):
    # 16:00 UTC on a Wednesday is 09:00 in Los Angeles
    world.place("b1", campaign("la", bid_cents=1000, schedule=Schedule(tz="America/Los_Angeles", hours={"wed": [("09:00", "17:00")]})))
    world.place("b2", campaign("tokyo", bid_cents=5000, schedule=Schedule(tz="Asia/Tokyo", hours={"wed": [("09:00", "17:00")]})))
    rec, _ = world.submit()
    assert rec.decision.route.campaign == "la"
    world.clock.t = NOON_NY_NS - 60 * 1_000_000_000  # 08:59 in LA
    rec, _ = world.submit()
    assert rec.decision.reason == "no_eligible_bid"


def test_concurrency_is_held_only_by_the_leg_in_use(world: World):
    world.place("b1", campaign("a", bid_cents=3000, caps=Caps(concurrency=1)))
    world.place("b2", campaign("b", bid_cents=1000))
    first, _ = world.submit()
    second, _ = world.submit()
    assert first.decision.route.campaign == "a"
    assert second.decision.route.campaign == "b"  # a is busy
    world.event(first, "completed", duration_s=120)
    third, _ = world.submit()
    assert third.decision.route.campaign == "a"


def test_daily_cap_and_budget(world: World):
    world.place("b1", campaign("capped", bid_cents=3000, caps=Caps(daily=2)))
    world.place("b2", campaign("budget", bid_cents=2000, daily_budget_cents=4000))
    world.place("b3", campaign("fallback", bid_cents=100))
    got = []
    for _ in range(5):
        rec, _ = world.submit()
        got.append(rec.decision.route.campaign)
        world.event(rec, "completed", duration_s=200)
    assert got == ["capped", "capped", "budget", "budget", "fallback"]


def test_buyer_without_funds_is_not_eligible_but_credit_counts(world: World):
    world.place("poor", campaign("a", bid_cents=3000), funds=None)
    world.place("rich", campaign("b", bid_cents=1000))
    rec, _ = world.submit()
    assert rec.decision.route.buyer == "rich"
    world.core.ledger.set_credit(buyer_account("poor"), 3000)
    rec, _ = world.submit()
    assert rec.decision.route.buyer == "poor"


def test_completed_long_enough_is_billable_and_balances_to_the_cent(world: World):
    world.place("b1", campaign("a", bid_cents=2999, min_duration_s=90), funds=10_000)
    rec, _ = world.submit(publisher="pub")
    ledger = world.core.ledger
    assert ledger.held[buyer_account("b1")] == 2999
    out, notices = world.event(rec, "completed", duration_s=90)
    assert out.billable and out.charged_cents == 2999 and out.payout_cents == 2399
    assert ledger.balance(buyer_account("b1")) == 10_000 - 2999
    assert ledger.balance(publisher_account("pub")) == 2399
    assert ledger.balance(EXCHANGE_REVENUE) == 600
    assert ledger.held[buyer_account("b1")] == 0
    assert ledger.total() == 0
    assert notices[0][1].billable is True


def test_short_call_is_not_billable_and_releases_the_hold(world: World):
    world.place("b1", campaign("a", bid_cents=2500, min_duration_s=90), funds=10_000)
    rec, _ = world.submit()
    out, _ = world.event(rec, "completed", duration_s=89)
    assert not out.billable and out.charged_cents == 0
    assert world.core.ledger.balance(buyer_account("b1")) == 10_000
    assert world.core.ledger.held[buyer_account("b1")] == 0


def test_failed_moves_to_the_next_route_and_only_that_leg_is_charged(world: World):
    world.place("b1", campaign("a", bid_cents=3000))
    world.place("b2", campaign("b", bid_cents=2000))
    rec, _ = world.submit()
    out, notices = world.event(rec, "failed", route_index=0)
    assert out.status == "routed" and out.route_index == 1 and out.route.buyer == "b2"
    assert [type(m).__name__ for _, m in notices] == ["CallNotice", "Win"]
    assert world.core.ledger.held[buyer_account("b1")] == 0
    out, _ = world.event(rec, "completed", duration_s=300, route_index=1)
    assert out.billable and out.charged_cents == 2000
    failed, _ = world.event(rec, "failed")
    assert failed.code == "call_finished"


def test_stale_route_index_is_refused(world: World):
    world.place("b1", campaign("a", bid_cents=3000))
    rec, _ = world.submit()
    err, _ = world.event(rec, "completed", duration_s=100, route_index=1)
    assert err.code == "stale_route"


def test_events_are_idempotent_by_key(world: World):
    world.place("b1", campaign("a", bid_cents=3000), funds=10_000)
    rec, _ = world.submit()
    first, _ = world.event(rec, "completed", duration_s=100, key="same")
    again, notices = world.event(rec, "completed", duration_s=100, key="same")
    assert again == first and notices == []
    conflict, _ = world.event(rec, "completed", duration_s=5, key="same")
    assert conflict.code == "idempotency_conflict"
    assert world.core.ledger.balance(buyer_account("b1")) == 7_000


def test_expiry_without_event_releases_the_leg(world: World):
    from exchange.lifecycle import expire_due

    world.place("b1", campaign("a", bid_cents=3000, caps=Caps(concurrency=1)))
    rec, _ = world.submit()
    assert expire_due(world.core, world.clock.now_ns()) == []
    world.clock.advance(world.settings.route_ttl_s + 1)
    notices = expire_due(world.core, world.clock.now_ns())
    assert rec.status == "expired" and notices[0][0] == "b1"
    assert world.core.ledger.held[buyer_account("b1")] == 0
    again, _ = world.submit()
    assert again.decision.route.campaign == "a"


def test_repeat_caller_within_dedupe_window_goes_elsewhere(world: World):
    world.place("b1", campaign("a", bid_cents=3000, dedupe_days=30))
    world.place("b2", campaign("b", bid_cents=1000))
    rec, _ = world.submit(call("+12125550111"))
    world.event(rec, "completed", duration_s=200)
    world.clock.advance(86_400)
    again, _ = world.submit(call("+12125550111"))
    assert again.decision.route.buyer == "b2"
    world.clock.advance(31 * 86_400)
    later, _ = world.submit(call("+12125550111"))
    assert later.decision.route.buyer == "b1"


def test_in_flight_repeat_caller_is_billable_only_once(world: World):
    world.place("b1", campaign("a", bid_cents=3000, dedupe_days=30), funds=100_000)
    one, _ = world.submit(call("+12125550123"))
    two, _ = world.submit(call("+12125550123"))  # routed before the first was billed
    a, _ = world.event(one, "completed", duration_s=200)
    b, _ = world.event(two, "completed", duration_s=200)
    assert (a.billable, b.billable) == (True, False)


def test_gate_rejects_before_the_auction(world: World):
    world.place("b1", campaign("a", bid_cents=3000, accepts_outbound=True))
    world.core.gate.suppressions.add("+12125550100", "exchange", 0)
    rec, notices = world.submit(call("+18885550100", direction="outbound", callee="+12125550100"))
    assert rec.decision.reason == "internal_dnc" and notices == []
    rec, _ = world.submit(call("+18885550100", direction="outbound", callee="+13125550100", consent_token=world.consent("+13125550100", "b1")))
    assert rec.decision.reason == "ok"
    world.clock.t = NOON_NY_NS + 10 * 3600 * 1_000_000_000  # 22:00 in New York
    rec, _ = world.submit(call("+18885550100", direction="outbound", callee="+12125550177", consent_token=world.consent("+12125550177", "b1")))
    assert (rec.decision.reason, rec.decision.rule) == ("outside_calling_hours", "federal")


def test_outbound_needs_a_campaign_that_accepts_outbound(world: World):
    world.place("b1", campaign("a", bid_cents=3000))
    rec, _ = world.submit(call("+18885550100", direction="outbound", callee="+13125550100", consent_token=world.consent("+13125550100", "b1")))
    assert rec.decision.reason == "no_eligible_bid"


def test_buyer_scoped_suppression_only_blocks_that_buyer(world: World):
    world.place("b1", campaign("a", bid_cents=3000, accepts_outbound=True))
    world.place("b2", campaign("b", bid_cents=1000, accepts_outbound=True))
    world.core.gate.suppressions.add("+13125550100", "buyer:b1", 0)
    token = world.consent("+13125550100", "b1", "b2")
    rec, _ = world.submit(call("+18885550100", direction="outbound", callee="+13125550100", consent_token=token))
    assert rec.decision.route.buyer == "b2"


def test_rtb_answers_compete_with_standing_bids():
    world = World(rtb_tmax_ms=80)
    world.place("b1", campaign("standing", bid_cents=2000))
    world.place("b2", campaign("live", bid_cents=0, rtb=True))
    world.place("b3", campaign("silent", bid_cents=0, rtb=True))
    p = prepare(world.core, call(), "p1", "callX", world.clock.now_ns())
    reqs = {req.campaign: req for _, req in p.bid_requests}
    assert set(reqs) == {"live", "silent"} and reqs["live"].tmax_ms == 80
    from exchange.pipeline import decide

    answer = RtbBid(request_id=reqs["live"].request_id, bid_cents=3100, destination="+18005550100")
    rec, notices = decide(world.core, p, {answer.request_id: (answer, world.core.book.next_seq())}, world.clock.now_ns())
    assert rec.decision.route.campaign == "live" and rec.decision.route.destination == "+18005550100"
    reasons = {m.campaign: m.reason for _, m in notices if type(m).__name__ == "Loss"}
    assert reasons == {"silent": "timeout", "standing": "outbid"}


def test_publisher_may_only_lower_tmax():
    world = World(rtb_tmax_ms=80)
    world.place("b2", campaign("live", bid_cents=0, rtb=True))
    p = prepare(world.core, call(tmax_ms=500), "p1", "c", world.clock.now_ns())
    assert p.tmax_ms == 80
    p = prepare(world.core, call(tmax_ms=20), "p1", "c", world.clock.now_ns())
    assert p.tmax_ms == 20


def test_a_trimmed_rejected_call_keeps_what_get_and_replay_read_and_takes_no_event(world: World):
    from exchange.core import _NO_EVENTS, _NO_HISTORY

    first, _ = world.submit()
    second, _ = world.submit(call("+13125550100"))
    assert first.status == second.status == "rejected"
    request, decision = first.request, first.decision
    world.core.trim(first)
    world.core.trim(second)
    assert first.request is request and first.decision is decision and first.status == "rejected"
    assert first.evidence is second.evidence and first.evidence["reason"]  # shared, still whole
    assert first.consumer is None and first.bids == () and first.route is None
    for ev in ("connected", "completed", "failed"):
        out, notices = world.event(first, ev, duration_s=10)
        assert getattr(out, "code", None) == "call_finished" and not notices
    assert _NO_EVENTS == {} and _NO_HISTORY == []


def test_a_campaign_that_can_take_no_call_now_is_parked_on_arrival_and_comes_back_on_its_event(world: World):
    """Closed by its schedule, or bid above its buyer's funds: parked when it arrives (never in
    the heaps a decision walks), back at the schedule's opening or on a deposit that covers it."""
    book = world.core.book
    world.place("b1", campaign("tokyo", bid_cents=5000, schedule=Schedule(tz="Asia/Tokyo", hours={"thu": [("09:00", "17:00")]})))
    world.place("b2", campaign("broke", bid_cents=9000), funds=None)  # b2 has no funds at all
    world.place("b3", campaign("open", bid_cents=1000))
    assert book.parked == 2 and book.scanned == 0
    rec, _ = world.submit()
    assert rec.decision.route.campaign == "open"
    alone = World()
    alone.place("b3", campaign("open", bid_cents=1000))
    alone.submit()
    assert book.scanned == alone.core.book.scanned == 1, "the decision looked only at the campaign that can take the call"
    world.fund("b2", 10_000)
    rec, _ = world.submit()
    assert rec.decision.route.campaign == "broke"  # the deposit brought it back
    world.clock.t = NOON_NY_NS + 9 * 3600 * 1_000_000_000  # 01:00 UTC Thursday = 10:00 in Tokyo
    rec, _ = world.submit()
    assert rec.decision.route.campaign == "tokyo"  # its schedule's opening brought it back
    assert book.parked == 1  # "broke" again: the hold of its first call left b2 less than its bid


def test_a_foreign_or_service_number_that_nobody_takes_gets_its_own_reason(world: World):
    world.place("b1", campaign("ny_only", bid_cents=3000, states=["NY"]))
    rec, _ = world.submit(call("+442079460958"))  # London
    assert (rec.decision.decision, rec.decision.reason) == ("rejected", "foreign_number")
    rec, _ = world.submit(call("+18002752273"))  # toll-free
    assert (rec.decision.decision, rec.decision.reason) == ("rejected", "non_geographic_number")
    rec, _ = world.submit(call("+14155550100"))  # California: a US number nobody targets stays no_eligible_bid
    assert rec.decision.reason == "no_eligible_bid"
