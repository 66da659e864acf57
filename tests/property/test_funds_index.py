"""The funds index (``Book.park_funds`` / ``wake_funds``): a buyer that cannot cover its bid
leaves the ranked index and comes back when its funds do, and nothing eligible is ever hidden.

The oracle is a brute-force scan of the whole book, made before each call from the ledger and
the campaigns as they stand, with no index: the call must go to the highest bid it finds.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from billing.postings import buyer_account, deposit
from routing.standing import CampaignError
from exchange.messages import Campaign, Caps
from tests.builders import World, call, submit_checked

BUYERS = 4
CAMPAIGNS = 10

ops = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.integers(0, 999)),
        st.tuples(st.just("event"), st.integers(0, 60), st.sampled_from(["connected", "completed", "failed"]), st.integers(0, 200)),
        st.tuples(st.just("bid"), st.integers(0, CAMPAIGNS - 1), st.integers(100, 6000)),
        st.tuples(st.just("deposit"), st.integers(0, BUYERS - 1), st.integers(1, 8000)),
        st.tuples(st.just("credit"), st.integers(0, BUYERS - 1), st.integers(0, 5000)),
        st.tuples(st.just("pause"), st.integers(0, CAMPAIGNS - 1), st.booleans()),
        st.tuples(st.just("replace"), st.integers(0, CAMPAIGNS - 1), st.integers(100, 6000)),
    ),
    max_size=80,
)


def _campaign(i: int, bid: int) -> Campaign:
    return Campaign(id=f"c{i}", vertical="v", bid_cents=bid, caps=Caps(concurrency=2) if i % 3 == 0 else None,
                    min_duration_s=60, destination="+18005550199")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.lists(st.integers(0, 4000), min_size=BUYERS, max_size=BUYERS))
def test_parked_campaigns_never_hide_an_eligible_bid(sequence, start_funds):
    w = World(route_ttl_s=3600)
    for b, cents in enumerate(start_funds):
        if cents:
            w.fund(f"b{b}", cents)
    for i in range(CAMPAIGNS):
        w.place(f"b{i % BUYERS}", _campaign(i, 500 + 450 * i), funds=None)
    records = []
    for n, op in enumerate(sequence):
        kind = op[0]
        if kind == "call":
            records.append(submit_checked(w, f"+1212555{op[1]:04d}"))
        elif kind == "event" and records:
            w.event(records[op[1] % len(records)], op[2], duration_s=op[3])
        elif kind == "bid":
            w.core.book.reprice(f"b{op[1] % BUYERS}", f"c{op[1]}", op[2])
        elif kind == "deposit":
            w.core.ledger.post(deposit(buyer_account(f"b{op[1]}"), op[2], f"d{n}", w.clock.now_ns()))
        elif kind == "credit":
            w.core.ledger.set_credit(buyer_account(f"b{op[1]}"), op[2])
        elif kind == "pause":
            w.core.book.set_paused(f"b{op[1] % BUYERS}", f"c{op[1]}", op[2])
        elif kind == "replace":
            w.core.book.upsert(f"b{op[1] % BUYERS}", _campaign(op[1], op[2]))
        assert w.core.book.parked == sum(1 for s in w.core.book.standing() if s.parked)
        assert w.core.ledger.total() == 0


def test_an_unfunded_flood_costs_the_calls_nothing_after_the_first():
    """The reported attack: a buyer without funds streams thousands of campaigns at the top
    price into a vertical. The first call finds them unfundable and parks them; later calls
    examine only what they route; a deposit brings them back at their old priority."""
    w = World()
    w.place("honest", _campaign(0, 1500), funds=1_000_000)
    flood = 1_500
    for i in range(flood):
        w.core.book.upsert("broke", Campaign(id=f"f{i}", vertical="v", bid_cents=9_000 - i % 7, min_duration_s=60,
                                             destination="+18005550199"))
    rec, _ = w.submit(call("+12125550100", "v"))
    assert rec.routes[0].buyer == "honest"
    assert w.core.book.parked == flood
    for k in range(5):
        before = w.core.book.scanned
        rec, _ = w.submit(call(f"+1212555020{k}", "v"))
        assert rec.routes[0].buyer == "honest"
        assert w.core.book.scanned - before <= 1, "a decision walked the parked flood"
        w.event(rec, "completed", duration_s=10)  # short: the hold is released
    for i in range(50):  # bids streamed to parked campaigns keep them parked while unfundable
        w.core.book.reprice("broke", f"f{i}", 9_500)
    before = w.core.book.scanned
    rec, _ = w.submit(call("+12125550300", "v"))
    assert rec.routes[0].buyer == "honest" and w.core.book.scanned - before <= 1
    w.fund("broke", 9_400)  # covers the 9,000-ish bids, not the 9,500 ones
    rec, _ = w.submit(call("+12125550301", "v"))
    assert rec.routes[0].buyer == "broke" and rec.routes[0].bid_cents == 9_000
    assert sum(s.parked == "funds" for s in w.core.book.standing()) == 50  # the 9,500 bids still wait for money


def test_a_campaign_past_the_ceiling_is_refused_and_nothing_changes():
    w = World(max_campaigns_per_buyer=3)
    for i in range(3):
        w.place("b", _campaign(i, 1000 + i))
    try:
        w.core.book.upsert("b", _campaign(3, 5000))
    except CampaignError as exc:
        assert exc.code == "campaign_limit" and "3" in str(exc)
    else:
        raise AssertionError("the fourth campaign was accepted")
    w.core.book.upsert("b", _campaign(2, 4000))  # replacing one of the three is not a new one
    w.core.book.upsert("other", _campaign(3, 100))  # the ceiling is per buyer
    assert len(w.core.book) == 4
    rec, _ = w.submit(call("+12125550100", "v"))
    assert rec.routes[0].bid_cents == 4000


def test_a_parked_campaign_repriced_many_times_wakes_exactly_when_funds_cover_its_price_now():
    """A price raised while parked pushes no entry (the lower one it has stays), a price cut pushes
    one; a wake pops an entry and checks the price as it is now. Many reprices (past the heap's
    compaction) keep one entry per campaign and hide nothing."""
    w = World()
    w.place("honest", _campaign(0, 1000), funds=1_000_000)
    w.core.book.upsert("broke", Campaign(id="p", vertical="v", bid_cents=3000, min_duration_s=60, destination="+18005550199"))
    rec, _ = w.submit(call("+12125550100", "v"))
    assert rec.routes[0].buyer == "honest" and w.core.book.parked == 1
    for k in range(500):  # a walk that ends above where it started, cutting below it on the way
        w.core.book.reprice("broke", "p", 2000 + (k * 37) % 1500)
    w.core.book.reprice("broke", "p", 4000)
    heap = w.core.book.lot._wanting[buyer_account("broke")]
    assert len(heap) <= heap.limit and min(e[0] for e in heap) <= 4000
    w.fund("broke", 3500)  # covers every price it had on the way down, not the one it has
    rec, _ = w.submit(call("+12125550101", "v"))
    assert rec.routes[0].buyer == "honest" and w.core.book.parked == 1
    w.fund("broke", 600)  # 4,100 now: covers 4,000
    rec, _ = w.submit(call("+12125550102", "v"))
    assert rec.routes[0].buyer == "broke" and rec.routes[0].bid_cents == 4000
