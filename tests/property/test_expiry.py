"""Legs that lapse (``lifecycle.expire_due``) are found through the core's heap of expiry
instants, not by a scan of every active call. The oracle is that scan: before each sweep, the
active calls whose ``expires_ns`` has passed; the sweep must expire exactly those, whatever came
before (routed calls, connected ones whose instant moved ``max_call_s`` ahead, failed legs moved
to a fallback with an instant of their own, completions, sweeps at any moment)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from exchange.lifecycle import expire_due
from tests.builders import World, call, campaign

ops = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.integers(0, 9999)),
        st.tuples(st.just("event"), st.integers(0, 50), st.sampled_from(["connected", "completed", "failed"])),
        st.tuples(st.just("advance"), st.sampled_from([1, 20, 59, 61, 300, 3600, 4 * 3600 + 1])),
        st.tuples(st.just("sweep"),),
    ),
    min_size=10, max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_the_sweep_expires_exactly_the_legs_whose_instant_passed(sequence):
    w = World(route_ttl_s=60, max_call_s=3600)
    for b in range(3):  # three buyers: a failed leg can move to a fallback buyer's campaign
        w.place(f"b{b}", campaign(id=f"c{b}", vertical="v", bid_cents=2000 + 100 * b))
    records = []
    for op in sequence:
        if op[0] == "call":
            rec, _ = w.submit(call(f"+1212555{op[1]:04d}", "v"))
            if rec.status == "routed":
                records.append(rec)
        elif op[0] == "event" and records:
            w.event(records[op[1] % len(records)], op[2], duration_s=90 if op[2] == "completed" else None)
        elif op[0] == "advance":
            w.clock.advance(op[1])
        else:
            now = w.clock.now_ns()
            want = {r.call_id for r in w.core.active.values() if r.expires_ns is not None and r.expires_ns <= now}
            before = {r.call_id for r in records if r.status == "expired"}
            expire_due(w.core, now)
            assert {r.call_id for r in records if r.status == "expired"} - before == want  # those, and no other
            assert not [r for r in w.core.active.values() if r.expires_ns is not None and r.expires_ns <= now]
        assert len(w.core.expiring) <= 2 * len(w.core.active) + 1025
    now = w.clock.now_ns() + 10 * 3600 * 1_000_000_000
    expire_due(w.core, now)
    assert not w.core.active  # every leg lapses in the end
