"""The parking lot (``exchange/parking.py``): campaigns refused for a reason that holds until an
event or an instant (schedule, caps, daily budget, concurrency, funds) leave the ranked index
and come back on that event, and nothing eligible is ever hidden, also when a buyer sends a
campaign again (replaced, as the gateway applies it: parked on arrival if it can take no call).

The oracle is a brute-force check of every campaign in the book with the pipeline's own
``refusal`` (no index), made before each call at the call's instant: the call must go to the
highest bid it finds. Sequences move the clock by minutes to days, across schedule edges,
local hours, days and months, in zones on both sides of UTC.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from billing.postings import buyer_account, deposit
from exchange.lifecycle import expire_due
from exchange.messages import Campaign, Caps, Schedule
from tests.builders import World, submit_checked

BUYERS = 3
HOURS = [
    None,
    {"mon": [("09:00", "17:30")], "tue": [("09:00", "17:30")], "wed": [("09:00", "17:30")], "thu": [("09:00", "17:30")],
     "fri": [("09:00", "17:30")]},
    {d: [("00:00", "06:00"), ("18:15", "24:00")] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
    {"sat": [("10:00", "14:00")], "sun": [("00:00", "24:00")]},
]
ZONES = ["America/New_York", "America/Los_Angeles", "Asia/Kolkata", "Australia/Lord_Howe", "UTC"]

campaign = st.tuples(
    st.integers(500, 6000),  # bid
    st.sampled_from(range(len(HOURS))),  # schedule
    st.sampled_from(ZONES),
    st.sampled_from([None, 1, 2]),  # concurrency
    st.sampled_from([None, 1, 3]),  # hourly
    st.sampled_from([None, 2, 5]),  # daily
    st.sampled_from([None, 4]),  # monthly
    st.sampled_from([None, 5000, 12000]),  # daily budget
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.integers(0, 9999)),
        st.tuples(st.just("call"), st.integers(0, 9999)),
        st.tuples(st.just("event"), st.integers(0, 60), st.sampled_from(["connected", "completed", "failed"]), st.integers(0, 200)),
        st.tuples(st.just("advance"), st.sampled_from([1, 7, 29, 61, 240, 1439, 1441, 4000, 44_000])),
        st.tuples(st.just("bid"), st.integers(0, 7), st.integers(100, 6000)),
        st.tuples(st.just("deposit"), st.integers(0, BUYERS - 1), st.integers(1, 20_000)),
        st.tuples(st.just("pause"), st.integers(0, 7), st.booleans()),
        st.tuples(st.just("replace"), st.integers(0, 7), campaign),
    ),
    min_size=20, max_size=80,
)


def campaign_of(i: int, spec: tuple) -> Campaign:
    bid, hours, zone, conc, hourly, daily, monthly, budget = spec
    sched = Schedule(tz=zone, hours=HOURS[hours]) if HOURS[hours] is not None else None  # type: ignore[arg-type]
    return Campaign(id=f"c{i}", vertical="v", bid_cents=bid, schedule=sched,
                    caps=Caps(concurrency=conc, hourly=hourly, daily=daily, monthly=monthly), daily_budget_cents=budget,
                    min_duration_s=60, destination="+18005550199")


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(campaign, min_size=1, max_size=8), ops, st.lists(st.integers(0, 30_000), min_size=BUYERS, max_size=BUYERS))
def test_parking_never_hides_an_eligible_bid(campaigns, sequence, funds):
    w = World(route_ttl_s=600)
    for b, cents in enumerate(funds):
        if cents:
            w.fund(f"b{b}", cents)
    for i, spec in enumerate(campaigns):
        w.core.book.upsert(f"b{i % BUYERS}", campaign_of(i, spec))
    records = []
    n = len(campaigns)
    for k, op in enumerate(sequence):
        kind = op[0]
        if kind == "call":
            expire_due(w.core, w.clock.now_ns())
            records.append(submit_checked(w, f"+1212555{op[1]:04d}"))
        elif kind == "event" and records:
            w.event(records[op[1] % len(records)], op[2], duration_s=op[3])
        elif kind == "advance":
            w.clock.advance(op[1] * 60)
        elif kind == "bid":
            w.core.book.reprice(f"b{op[1] % n % BUYERS}", f"c{op[1] % n}", op[2])
        elif kind == "deposit":
            w.core.ledger.post(deposit(buyer_account(f"b{op[1]}"), op[2], f"d{k}", w.clock.now_ns()))
        elif kind == "replace":  # a buyer sends the campaign again, changed or not: as the gateway applies it
            i = op[1] % n
            w.core.upsert_campaign(f"b{i % BUYERS}", campaign_of(i, op[2]), w.clock.now_ns())
        elif kind == "pause":
            w.core.book.set_paused(f"b{op[1] % n % BUYERS}", f"c{op[1] % n}", op[2])
        assert w.core.book.parked == sum(1 for s in w.core.book.standing() if s.parked is not None)
        assert w.core.ledger.total() == 0
