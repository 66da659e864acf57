"""Call quality signals over the pure core (manual clock): caller velocity, near-duplicate
callers, short and clustered durations, the publisher's risk score, and what a decision does
with them."""

from __future__ import annotations

from exchange.quality import PRIOR, Inputs, Quality, digits, risk_score
from tests.builders import World, call, campaign

S = 1_000_000_000


def test_caller_velocity_past_the_limit_rejects_with_caller_velocity_and_records_the_count():
    w = World(quality_velocity_max_calls=3, quality_window_s=60)
    w.place("b1", campaign("c", bid_cents=1000))
    for _ in range(3):
        rec, _ = w.submit(call("+12125550100"))
        assert rec.decision.decision == "routed"
    rec, notices = w.submit(call("+12125550100"))
    assert rec.decision.decision == "rejected" and rec.decision.reason == "caller_velocity" and notices == []
    assert rec.quality.caller_calls == 4 and rec.quality.velocity_max_calls == 3 and rec.quality.window_s == 60
    assert w.submit(call("+13125550100"))[0].decision.decision == "routed"  # another caller is not affected
    assert w.submit(call("+12125550100"), publisher="p2")[0].decision.decision == "routed"  # nor another publisher
    w.clock.t += 61 * S  # the burst slid out of the window
    assert w.submit(call("+12125550100"))[0].decision.decision == "routed"


def test_outbound_calls_are_not_counted_as_the_callers_velocity():
    q = Quality()
    assert q.observe("p", 12125550100, 0).caller_calls == 1
    w = World(quality_velocity_max_calls=1)
    w.place("b1", campaign("c", accepts_outbound=True))
    for n in range(3):
        rec, _ = w.submit(call("+18885550100", direction="outbound", callee=f"+1212555{n:04d}", consent_token=w.consent(f"+1212555{n:04d}", "b1")))
        assert rec.decision.reason != "caller_velocity"
        assert rec.quality.caller_calls is None


def test_near_duplicate_callers_are_other_numbers_of_the_same_publisher_differing_in_the_last_digits():
    q = Quality(window_s=600, near_digits=2)
    t = 1_000 * S
    assert q.observe("p1", 12125550100, t).near_duplicates == 0
    assert q.observe("p1", 12125550101, t).near_duplicates == 1
    assert q.observe("p1", 12125550199, t).near_duplicates == 2
    assert q.observe("p1", 12125550101, t).near_duplicates == 2  # the same number again: still 2 others
    assert q.observe("p1", 12125550200, t).near_duplicates == 0  # another hundred
    assert q.observe("p2", 12125550102, t).near_duplicates == 0  # another publisher
    i = q.inputs("p1", t)
    assert (i.calls, i.repeats, i.near_duplicate_calls) == (5, 1, 3)
    assert q.inputs("p1", t + 600 * S) == Inputs()  # all slid out


def test_completed_durations_count_short_payable_and_clustered_per_publisher():
    q = Quality(outcome_window_s=3600, cluster_s=5)
    t = 10_000 * S
    for d in (10, 89, 90, 94, 95, 300):
        q.completed("p1", d, 90, t)
    q.completed("p1", 3, 0, t)  # no buffer: never short, never clustered
    i = q.inputs("p1", t)
    assert (i.completed, i.short, i.payable, i.clustered) == (7, 2, 4, 2)
    assert q.inputs("p2", t) == Inputs()
    assert q.inputs("p1", t + 3600 * S).completed == 0  # 60 buckets of a minute: gone after the hour


def test_the_risk_score_formula():
    assert risk_score(Inputs()) == 0
    # 100 clustered of 100 payable and nothing else: 0.35 * 100 / 120 -> 29
    assert risk_score(Inputs(completed=100, payable=100, clustered=100)) == round(100 * 0.35 * 100 / (100 + PRIOR))
    everything = Inputs(calls=10**6, repeats=10**6, near_duplicate_calls=10**6, completed=10**6, short=10**6, payable=10**6, clustered=10**6)
    assert 99 <= risk_score(everything) <= 100
    assert risk_score(Inputs(completed=2, short=2)) <= 3  # a couple of calls cannot make a score


def test_a_campaign_skips_publishers_above_its_max_publisher_risk():
    w = World(pricing="first")
    w.place("b1", campaign("careful", bid_cents=3000, max_publisher_risk=10))
    w.place("b2", campaign("any", bid_cents=1000))
    rec, _ = w.submit(call("+12125550100"), publisher="p1")
    assert rec.decision.route.campaign == "careful" and rec.quality.publisher_risk == 0
    for n in range(60):  # p1's paid calls all end within 5 s past the buffer
        w.core.quality.completed("p1", 90 + n % 5, 90, w.clock.now_ns())
    risk = w.core.quality.risk("p1", w.clock.now_ns())
    assert risk > 10
    rec, _ = w.submit(call("+13125550100"), publisher="p1")
    assert rec.decision.route.campaign == "any" and rec.quality.skipped == {"publisher_risk": 1}
    assert rec.quality.publisher_risk == risk
    assert w.submit(call("+14155550100"), publisher="p2")[0].decision.route.campaign == "careful"
    w2 = World()
    w2.place("b1", campaign("careful", max_publisher_risk=0))
    w2.core.quality.completed("p1", 91, 90, w2.clock.now_ns())
    assert w2.submit(call(), publisher="p1")[0].decision.reason == "publisher_risk"


def test_completed_events_feed_the_publishers_window():
    w = World()
    w.place("b1", campaign("c", min_duration_s=90))
    rec, _ = w.submit()
    w.event(rec, "connected")
    w.event(rec, "completed", duration_s=92)
    i = w.core.quality.inputs("p1", w.clock.now_ns())
    assert (i.completed, i.short, i.payable, i.clustered) == (1, 0, 1, 1)


def test_signals_off_record_nothing_and_apply_no_threshold():
    w = World(quality_signals=False, quality_velocity_max_calls=1)
    w.place("b1", campaign("c", max_publisher_risk=0))
    w.core.quality.completed("p1", 91, 90, w.clock.now_ns())
    for _ in range(3):
        rec, _ = w.submit()
        assert rec.decision.decision == "routed" and rec.quality is None
    assert w.core.quality.inputs("p1", w.clock.now_ns()).calls == 0


def test_the_window_is_bounded():
    q = Quality(window_s=3600, max_events=1000)
    for n in range(5000):
        q.observe("p", 12125550000 + n, n)
    assert len(q.events) == 1000 and len(q.callers) == 1000 and sum(q.groups.values()) == 1000 and q.evicted == 4000
    assert q.inputs("p", 5000).calls == 1000


def test_digits_of_an_e164_number():
    assert digits("+12125550100") == 12125550100
    assert digits("2125550100") is None and digits("+1212x") is None


def test_expire_empties_the_windows_that_time_left():
    q = Quality(window_s=10, outcome_window_s=60)
    q.observe("p", 12125550100, 0)
    q.completed("p", 100, 90, 0)
    q.expire(61 * S)
    assert not q.events and not q.callers and not q.groups and not q.pubs and not q.outcomes
