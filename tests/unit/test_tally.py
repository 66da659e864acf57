"""The report aggregate and the call logs, pure: counters per hour, scopes, groupings, pages."""

from __future__ import annotations


from exchange.calllog import CallLog
from exchange.tally import BILLABLE, CALLS, GROUPS, HOUR_NS, REVENUE, ROUTED, WINS, Tally

T0 = 1_780_000_000 * 1_000_000_000 // HOUR_NS * HOUR_NS  # the start of an hour


def rows(t: Tally, group_by: str, kind: str = "operator", owner: str | None = None, lo: int = T0, hi: int = T0 + 48 * HOUR_NS):
    return {k: c for k, c in t.report(group_by, kind, owner, lo, hi, hi)}


def test_a_routed_call_counts_once_for_the_market_and_once_per_bidder():
    t = Tally()
    t.decided(T0, "p1", "auto", "CA", "ok", [("b1", "c1"), ("b2", "c2")], [("b1", "c1", 3000), ("b2", "c2", 2000), ("b3", "c3", 100)], 500)
    by_pub = rows(t, "publisher")
    assert by_pub["p1"][CALLS] == 1 and by_pub["p1"][ROUTED] == 1 and by_pub["p1"][WINS] == 1
    by_buyer = rows(t, "buyer")
    assert {k: (c[CALLS], c[WINS]) for k, c in by_buyer.items()} == {"b1": (1, 1), "b2": (1, 0), "b3": (1, 0)}
    assert set(rows(t, "reason", "buyer", "b3")) == {"below_floor"}
    assert set(rows(t, "reason", "buyer", "b2")) == {"fallback"}
    assert set(rows(t, "reason", "publisher", "p1")) == {"ok"}


def test_a_completion_adds_money_to_the_call_and_to_the_leg_that_was_billed():
    t = Tally()
    t.decided(T0, "p1", "auto", "CA", "ok", [("b1", "c1"), ("b2", "c2")], [("b1", "c1", 3000), ("b2", "c2", 2000)], 0)
    t.rang(T0, "p1", "auto", "CA", "b2", "c2")
    t.completed(T0, "p1", "auto", "CA", ("b1", "c1"), ("b2", "c2"), "fallback", 90, True, 2000, 1600, 400)
    assert rows(t, "publisher")["p1"][REVENUE] == 2000
    b = rows(t, "campaign")
    assert (b["c2"][WINS], b["c2"][BILLABLE], b["c2"][REVENUE]) == (1, 1, 2000) and b["c1"][BILLABLE] == 0


def test_scopes_never_mix_tenants():
    t = Tally()
    t.decided(T0, "p1", "auto", "CA", "ok", [("b1", "c1")], [("b1", "c1", 3000)], 0)
    t.decided(T0, "p2", "auto", "TX", "no_eligible_bid", [], [], 0)
    assert set(rows(t, "state", "publisher", "p1")) == {"CA"} and set(rows(t, "state", "publisher", "p2")) == {"TX"}
    assert rows(t, "publisher", "buyer", "b1") == {"p1": rows(t, "publisher", "buyer", "b1")["p1"]}
    assert rows(t, "buyer", "buyer", "nobody") == {}


def test_hours_are_grouped_and_ranged_by_whole_hours_and_closed_hours_are_cached_until_touched():
    t = Tally()
    for h in range(3):
        t.decided(T0 + h * HOUR_NS + 5, "p1", "auto", "CA", "ok", [("b1", "c1")], [("b1", "c1", 100)], 0)
    assert [k for k in rows(t, "hour")] == [T0, T0 + HOUR_NS, T0 + 2 * HOUR_NS]
    assert list(rows(t, "hour", lo=T0 + HOUR_NS + 1, hi=T0 + HOUR_NS + 2)) == [T0 + HOUR_NS]
    assert t.hours[T0 // HOUR_NS].cache  # a closed hour's grouping is kept
    t.completed(T0 + 5, "p1", "auto", "CA", ("b1", "c1"), ("b1", "c1"), "won", 60, True, 100, 80, 20)
    assert rows(t, "publisher")["p1"][BILLABLE] == 1  # a late event clears that hour's cache


def test_a_months_report_costs_cells_not_calls():
    """A report walks the hours' cells (bounded by distinct keys), never the calls, and a closed
    hour's grouping is kept: twice the calls leave the cells as they are and double the counts.
    (How long a month's report takes is measured by ``python -m bench.reports``, not here.)"""
    t = Tally()

    def month() -> None:
        for h in range(30 * 24):  # 300 distinct cells an hour: 20 publishers x 5 campaigns x 3 states
            for n in range(300):
                t.decided(T0 + h * HOUR_NS, f"p{n % 20}", "auto", ("CA", "TX", "NY")[n % 3], "ok", [(f"b{n % 5}", f"c{n % 5}")],
                          [(f"b{n % 5}", f"c{n % 5}", 1000)], 0)

    month()
    now = T0 + 30 * 24 * HOUR_NS
    cells = {h: len(hour.calls) for h, hour in t.hours.items()}
    assert len(cells) == 30 * 24 and max(cells.values()) <= 300
    first = {g: t.report(g, "operator", None, T0, now, now) for g in ("publisher", "campaign", "hour")}
    assert all(hour.cache for hour in t.hours.values())  # every closed hour keeps its grouping
    for g, rows in first.items():
        assert t.report(g, "operator", None, T0, now, now) == rows  # the kept groupings give the same answer
    month()
    assert {h: len(hour.calls) for h, hour in t.hours.items()} == cells
    for g, rows in first.items():
        again = dict(t.report(g, "operator", None, T0, now, now))
        assert again.keys() == dict(rows).keys()
        for key, c in rows:
            assert again[key][0] == 2 * c[0], (g, key)


def test_call_log_pages_newest_first_with_a_stable_cursor():
    log, alive = CallLog(), {}
    for n in range(5):
        alive[f"c{n}"] = n
        log.decided(f"c{n}", "p1", T0 + n)
    page, cursor = log.page("p1", alive, None, None, lambda r: True, 2, None)
    assert page == [4, 3] and cursor is not None
    alive["c5"] = 5
    log.decided("c5", "p1", T0 + 5)  # a newer call does not shift the next page
    page, cursor = log.page("p1", alive, None, None, lambda r: True, 2, cursor)
    assert page == [2, 1]
    page, cursor = log.page("p1", alive, None, None, lambda r: True, 2, cursor)
    assert page == [0] and cursor is None
    del alive["c0"], alive["c1"]
    log.prune(alive)
    assert log.page("p1", alive, T0 + 2, T0 + 5, lambda r: True, 10, None) == ([4, 3, 2], None)
    assert log.page("p2", alive, None, None, lambda r: True, 10, None) == ([], None)


def test_live_answers_are_timed_and_their_median_reported_by_bucket():
    from exchange.tally import answer_p50_ms

    t = Tally()
    for n, ms in enumerate((4, 6, 9, 70)):
        t.decided(T0, "p1", "auto", "CA", "ok", [("b1", "live")], [("b1", "live", 3000)], 0, [("b1", "live", "ineligible", ms)])
        assert n + 1 == rows(t, "campaign", "buyer", "b1")["live"][CALLS]
    t.decided(T0, "p1", "auto", "CA", "no_eligible_bid", [], [], 0, [("b2", "slow", "timeout", None), ("b3", "no", "no_bid", 12)])
    c = rows(t, "campaign", "buyer", "b1")["live"]
    assert answer_p50_ms(c) == 7  # 4, 6, 9, 70 ms: the median falls in the (5, 7] bucket
    assert set(rows(t, "reason", "buyer", "b2")) == {"timeout"} and answer_p50_ms(rows(t, "campaign", "buyer", "b2")["slow"]) is None
    assert answer_p50_ms(rows(t, "reason", "buyer", "b3")["no_bid"]) == 15


def test_a_closed_day_is_merged_once_and_a_late_event_of_any_of_its_hours_clears_it():
    t = Tally()
    day0 = T0 // HOUR_NS // 24 * 24 * HOUR_NS  # midnight UTC
    for h in range(60):  # two whole days and half a third
        t.decided(day0 + h * HOUR_NS + 5, "p1", "auto", "CA", "ok", [("b1", "c1")], [("b1", "c1", 100)], 0)
    now = day0 + 60 * HOUR_NS
    by_pub = t.report("publisher", "operator", None, day0, now, now)
    assert by_pub[0][1][CALLS] == 60
    assert set(t.days) == {day0 // HOUR_NS // 24, day0 // HOUR_NS // 24 + 1}  # the two closed days, merged
    by_hour = t.report("hour", "operator", None, day0, now, now)
    assert [k for k, _ in by_hour] == [day0 + h * HOUR_NS for h in range(60)]
    # a range that cuts a day reads its hours, not the day
    assert t.report("publisher", "operator", None, day0 + 3 * HOUR_NS, day0 + 30 * HOUR_NS, now)[0][1][CALLS] == 27
    t.completed(day0 + 13 * HOUR_NS + 5, "p1", "auto", "CA", ("b1", "c1"), ("b1", "c1"), "won", 95, True, 100, 80, 20)
    assert day0 // HOUR_NS // 24 not in t.days
    assert t.report("publisher", "operator", None, day0, now, now)[0][1][BILLABLE] == 1
    t.prune(day0 + (24 * 37) * HOUR_NS)  # both days past the kept window (35 days)
    assert not t.days


def test_a_tenants_report_reads_its_own_cells_and_equals_a_scan_of_the_hour():
    import random

    rng = random.Random(3)
    t = Tally()
    for n in range(3000):
        bidders = rng.sample(range(8), rng.randint(0, 3))
        bids = [(f"b{b}", f"c{b}{rng.randint(0, 1)}", rng.randrange(100, 3000)) for b in bidders]
        routed = bool(bids) and rng.random() < 0.8
        plan = [(b, c) for b, c, _ in sorted(bids, key=lambda x: -x[2])][:2] if routed else []
        t.decided(T0 + n * 2_000_000_000, f"p{n % 5}", rng.choice(["auto", "solar"]), rng.choice(["CA", "TX"]),
                  "ok" if routed else "no_eligible_bid", plan, bids, 500)
    now = T0 + 6 * 3600 * 1_000_000_000
    for kind, owners, at, table in (("buyer", [f"b{i}" for i in range(8)], {"campaign": 1, "publisher": 2, "state": 4}, "bids"),
                                    ("publisher", [f"p{i}" for i in range(5)], {"campaign": 2, "vertical": 3, "reason": 5}, "calls")):
        for owner in owners:
            for group_by, gi in at.items():
                want: dict = {}
                for hour in t.hours.values():
                    for key, c in getattr(hour, table).items():
                        if key[0] == owner:
                            acc = want.setdefault(key[gi] or None, [0] * len(c))
                            for i, x in enumerate(c):
                                acc[i] += x
                assert dict(t.report(group_by, kind, owner, T0, now, now)) == want, (kind, owner, group_by)


def test_a_first_report_is_grouped_a_slice_at_a_time_letting_other_work_run():
    import asyncio

    from exchange import reports_api, tally

    t = Tally()
    for h in range(48):
        for n in range(400):
            t.decided(T0 + h * HOUR_NS + n, f"p{n % 40}", "auto", "CA", "ok", [(f"b{n % 7}", f"c{n % 13}")], [(f"b{n % 7}", f"c{n % 13}", 900)], 0)
    now = T0 + 48 * HOUR_NS
    assert len(list(t.warm("campaign", "operator", None, T0, now, now))) == 48  # every closed hour, once
    assert list(t.warm("campaign", "operator", None, T0, now, now)) == []  # then cached
    assert list(t.warm("campaign", "buyer", "b3", T0, now, now)) == [len(t.hours[T0 // HOUR_NS].own[(True, "b3")])] * 48  # its own cells only

    async def main() -> int:
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        old, tally.SLICE_CELLS = tally.SLICE_CELLS, 1000
        try:
            await reports_api.warm(t, "publisher", "operator", None, T0, now, now)
        finally:
            tally.SLICE_CELLS = old
            done = True
            await task
        return ticks

    assert asyncio.run(main()) >= 10  # 48 hours of 400+ cells, a yield every 1,000 cells read
    assert dict(t.report("publisher", "operator", None, T0, now, now))["p1"][CALLS] == 48 * 10


def test_sealing_groups_closed_hours_and_days_for_the_operator_so_a_first_report_reads_no_cell():
    """``Tally.seal`` (the background pass) leaves every closed hour grouped and every closed day
    merged for each of the operator's groupings: a first report then equals the one an unsealed
    copy computes, groups no hour (warm finds nothing to do), and a late event that reopens a sealed
    hour is counted at once and regrouped by the next pass; the open hour is never sealed."""
    import random

    day0 = T0 // HOUR_NS // 24 * 24 * HOUR_NS

    def fill(t: Tally) -> None:
        r = random.Random(5)
        for h in range(54):  # two closed days and 6 hours of a third, the last one open
            for n in range(60):
                b = r.randrange(6)
                plan = [(f"b{b}", f"c{b}")] if n % 4 else []
                t.decided(day0 + h * HOUR_NS + n, f"p{n % 7}", r.choice(["auto", "solar"]), r.choice(["CA", "TX", None]),
                          "ok" if plan else "no_eligible_bid", plan, [(f"b{b}", f"c{b}", 900)], 0)

    sealed, plain = Tally(), Tally()
    fill(sealed)
    fill(plain)
    now = day0 + 53 * HOUR_NS + 5
    steps = list(sealed.seal(now))
    assert len(steps) == 53 * len(GROUPS) + 2 * len(GROUPS)  # each closed hour, then each closed day, per grouping
    assert list(sealed.seal(now)) == []  # nothing left to do
    assert not sealed.hours[now // HOUR_NS].cache  # the open hour is not sealed
    for g in GROUPS:
        assert list(sealed.warm(g, "operator", None, day0, now, now)) == []
        assert sealed.report(g, "operator", None, day0, now, now) == plain.report(g, "operator", None, day0, now, now), g
    late = day0 + 30 * HOUR_NS + 7
    for t in (sealed, plain):
        t.completed(late, "p1", "auto", "CA", ("b1", "c1"), ("b1", "c1"), "won", 120, True, 900, 700, 200)
    assert sealed.report("publisher", "operator", None, day0, now, now) == plain.report("publisher", "operator", None, day0, now, now)
    # the report regrouped the reopened hour and remerged its day for its own grouping; the pass does the others
    assert len(list(sealed.seal(now))) == 2 * (len(GROUPS) - 1)


def test_an_update_while_an_hour_is_grouped_a_slice_at_a_time_leaves_no_stale_grouping(monkeypatch):
    from exchange import tally

    monkeypatch.setattr(tally, "SLICE_CELLS", 10)
    t, plain = Tally(), Tally()
    for x in (t, plain):
        for n in range(200):
            x.decided(T0 + n, f"p{n % 50}", "auto", "CA", "ok", [("b1", "c1")], [("b1", "c1", 900)], 0)
    now = T0 + 2 * HOUR_NS
    steps = t.seal(now)
    assert next(steps) == 10  # the first slice of the hour's 50 call cells, for one grouping
    for x in (t, plain):  # a late completion lands in the hour being grouped
        x.completed(T0 + 3, "p3", "auto", "CA", ("b1", "c1"), ("b1", "c1"), "won", 100, True, 900, 700, 200)
    list(steps)
    assert list(t.seal(now)) != []  # the abandoned grouping is done again by the next pass
    for g in GROUPS:
        assert t.report(g, "operator", None, T0, now, now) == plain.report(g, "operator", None, T0, now, now), g
