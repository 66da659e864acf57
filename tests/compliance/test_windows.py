"""The week tables of ``compliance.windows`` against the definition, minute by minute.

``Calendar.status`` must equal ``restricted`` on the exact local times of every zone, and
``Calendar.next_open`` the first open minute found by walking forward one minute at a time,
for real candidate sets (split area codes, several states, holidays, both 2026 DST days,
zones across the date line) and for odd rule sets whose windows open at midnight or inside
the DST gap.
"""

from __future__ import annotations

import random

import pytest

from compliance.instants import NS_PER_DAY, parse_rfc3339
from compliance.rules import StateRule, default_rules, zone
from compliance.windows import WEEK_NS, Calendar, Windows, offset_segments, restricted
from routing.schedule import NS_PER_MINUTE, local_time

RULES = default_rules()
HOL = RULES.holidays
HORIZON = RULES.policy.retry_horizon_days
SETS = [
    (("America/New_York",), ("FL",)),
    (("America/Chicago", "America/New_York"), ("IN",)),  # 812: split area code
    (("America/Chicago", "America/New_York"), ("FL", "AL")),  # 850 plus an Alabama address
    (("America/Chicago",), ("TX",)),  # Sunday noon opening
    (("America/Denver", "America/Los_Angeles"), ("ID", "WA")),
    (("America/Chicago",), ("LA",)),  # Sundays and holidays banned
    (("America/New_York",), ("RI",)),
    (("America/Phoenix", "America/Denver"), ("AZ",)),  # no DST beside DST
    (("Pacific/Guam",), ("GU",)),  # UTC+10: the local date runs ahead of UTC
    (("America/Anchorage", "Pacific/Honolulu"), ("AK",)),
    (("America/New_York",), ()),  # federal window only
]
WEEKS = ["2026-03-05T00:00:00Z", "2026-10-29T00:00:00Z", "2026-04-09T00:00:00Z", "2026-12-24T00:00:00Z"]


def definition(zones, rules, t):
    return restricted([local_time(z, t) for z in zones], rules, RULES.federal, HOL)


def walk_to_open(zones, rules, t, horizon_days=HORIZON):
    if definition(zones, rules, t) is None:
        return t
    limit = t + (horizon_days + 1) * NS_PER_DAY
    m = t // NS_PER_MINUTE + 1
    while m * NS_PER_MINUTE < limit:
        if definition(zones, rules, m * NS_PER_MINUTE) is None:
            return m * NS_PER_MINUTE
        m += 1
    return None


def calendar(names, states):
    cal = Windows(RULES.federal, HORIZON, RULES.states).calendar(names, states)
    assert cal is not None
    return cal


@pytest.mark.parametrize("names,states", SETS, ids=["+".join(s) or "federal" for _, s in SETS])
def test_status_matches_the_definition_at_every_minute_of_a_dst_week(names, states):
    cal = calendar(names, states)
    start = parse_rfc3339("2026-03-05T00:00:00Z")  # an epoch week holding 2026-03-08
    assert start % WEEK_NS == 0
    for m in range(start // NS_PER_MINUTE, (start + WEEK_NS) // NS_PER_MINUTE):
        t = m * NS_PER_MINUTE + (m % 7) * 1_000_000_000  # any instant of the minute
        assert cal.status(t, HOL) == definition(cal.zones, cal.rules, t), (names, states, t)


@pytest.mark.parametrize("names,states", SETS, ids=["+".join(s) or "federal" for _, s in SETS])
def test_next_open_is_the_first_open_minute(names, states):
    cal = calendar(names, states)
    rng = random.Random(hash((names, states)) & 0xFFFF)
    for week in WEEKS:
        start = parse_rfc3339(week)
        for _ in range(12):
            t = start + rng.randrange(WEEK_NS)
            closed = cal.status(t, HOL) is not None
            assert cal.next_open(t, HOL, closed=closed) == walk_to_open(cal.zones, cal.rules, t), (names, states, t)


def test_retry_crosses_the_table_of_the_next_week():
    cal = calendar(("America/New_York",), ("RI",))
    boundary = parse_rfc3339("2026-04-09T00:00:00Z")  # tables start on Thursdays 00:00 UTC
    assert boundary % WEEK_NS == 0
    evening = parse_rfc3339("2026-04-08T23:00:00Z")  # Wednesday 19:00 EDT: Rhode Island closed at 18:00
    assert cal.status(evening, HOL) == ("outside_calling_hours", "RI")
    assert cal.next_open(evening, HOL, closed=True) == parse_rfc3339("2026-04-09T13:00:00Z")  # Thursday 09:00
    la = calendar(("America/Chicago",), ("LA",))
    sat = parse_rfc3339("2026-04-05T02:00:00Z")  # Saturday 21:00 CDT; Sunday is banned in LA
    assert la.next_open(sat, HOL, closed=True) == parse_rfc3339("2026-04-06T13:00:00Z")


def test_holidays_replaced_take_effect_at_once():
    from compliance.rules import compile_holidays

    cal = calendar(("America/Chicago",), ("LA",))
    monday = parse_rfc3339("2026-04-13T15:00:00Z")  # 10:00 CDT
    assert cal.status(monday, HOL) is None
    hol = compile_holidays("test", {"LA": ["2026-04-13"]})
    assert cal.status(monday, hol) == ("state_day_restriction", "LA")
    assert cal.next_open(monday, hol, closed=True) == parse_rfc3339("2026-04-14T13:00:00Z")
    assert cal.status(monday, HOL) is None


def test_nothing_open_within_the_horizon_is_none():
    never = StateRule("XX", (None,) * 7, False, None, "test", "test")
    cal = Calendar([zone("America/New_York")], [never], RULES.federal, HORIZON)
    t = parse_rfc3339("2026-04-15T16:00:00Z")
    assert cal.status(t, HOL) == ("state_day_restriction", "XX")
    assert cal.next_open(t, HOL, closed=True) is None
    short = Calendar([zone("America/New_York")], [], RULES.federal, 0)  # horizon: the next 24 h
    evening = parse_rfc3339("2026-04-16T01:00:00Z")  # 21:00 EDT
    assert short.next_open(evening, HOL, closed=True) == parse_rfc3339("2026-04-16T12:00:00Z")
    assert short.next_open(evening - 13 * 3_600_000_000_000, HOL) == evening - 13 * 3_600_000_000_000


def test_odd_windows_at_midnight_and_in_the_dst_gap():
    """Rules the data does not have: windows that open at midnight or at 02:30 (missing on
    the spring DST day) still give the definition's answer at every minute."""
    odd = StateRule("QQ", ((0, 150), (150, 1440), (0, 1440), None, (150, 200), (60, 1439), (60, 150)),
                    False, None, "test", "test")  # Sundays 01:00-02:30: across both DST changes
    fed = (0, 1440)
    for names in (("America/New_York",), ("America/Chicago", "Pacific/Honolulu")):
        zones = [zone(n) for n in names]
        cal = Calendar(zones, [odd], fed, 3)
        for week in ("2026-03-05T00:00:00Z", "2026-10-29T00:00:00Z"):
            start = parse_rfc3339(week)
            for m in range(start // NS_PER_MINUTE, (start + WEEK_NS) // NS_PER_MINUTE):
                t = m * NS_PER_MINUTE
                assert cal.status(t, HOL) == restricted([local_time(z, t) for z in zones], [odd], fed, HOL), (names, t)


def test_an_opening_exactly_at_the_start_of_a_week_table():
    afternoon = StateRule("QQ", ((840, 1000),) * 7, False, None, "test", "test")  # 14:00 HST = 00:00 UTC
    cal = Calendar([zone("Pacific/Honolulu")], [afternoon], (0, 1440), 3)
    t = parse_rfc3339("2026-04-08T23:00:00Z")  # Wednesday 13:00 HST
    assert cal.status(t, HOL) == ("outside_calling_hours", "QQ")
    assert cal.next_open(t, HOL, closed=True) == parse_rfc3339("2026-04-09T00:00:00Z")


def test_offset_segments_find_the_dst_minutes():
    a = parse_rfc3339("2026-03-05T00:00:00Z")
    segs = offset_segments(zone("America/New_York"), a, a + WEEK_NS)
    assert [(s, o // 3_600_000_000_000) for s, _, o in segs] == [(a, -5), (parse_rfc3339("2026-03-08T07:00:00Z"), -4)]
    assert segs[-1][1] == a + WEEK_NS and segs[0][1] == segs[1][0]
    b = parse_rfc3339("2026-10-29T00:00:00Z")
    segs = offset_segments(zone("America/Chicago"), b, b + WEEK_NS)
    assert [s for s, _, _ in segs][1] == parse_rfc3339("2026-11-01T07:00:00Z")
    assert len(offset_segments(zone("America/Phoenix"), a, a + WEEK_NS)) == 1


def test_prebuild_builds_this_week_and_the_next_for_every_set_seen():
    w = Windows(RULES.federal, HORIZON, RULES.states)
    a, b = w.calendar(("America/New_York",), ("FL",)), w.calendar(("America/Chicago",), ("TX",))
    t = parse_rfc3339("2026-04-15T16:00:00Z")
    week = t // WEEK_NS
    a.status(t, HOL)
    assert w.prebuild(t, HOL, limit=2) == 2 and b.weeks() == [week] and a.weeks() == [week, week + 1]
    assert w.prebuild(t, HOL, limit=16) == 1 and b.weeks() == [week, week + 1]
    assert w.prebuild(t, HOL, limit=16) == 0
    from compliance.rules import compile_holidays

    assert w.prebuild(t, compile_holidays("new", {}), limit=16) == 4  # new holidays: every table again


def test_the_gate_prebuilds_next_weeks_table_for_the_sets_its_decisions_used():
    from compliance.check import load_state
    from compliance.consent import Consent
    from compliance.gate import Gate

    gate = Gate(rules=RULES, stores=load_state({"national_dnc": {"snapshot_date": "2026-04-10", "numbers": {}}}))
    t = parse_rfc3339("2026-04-15T16:00:00Z")
    v = gate.decide("outbound", "+13053581234", t, buyer="b")
    assert v.reason == "consent_missing" and gate.calendars() == []  # denied before the calling windows
    gate.stores.consents.add(Consent("tok", "+13053581234", frozenset({"b"}), t - NS_PER_DAY))
    assert gate.decide("outbound", "+13053581234", t, buyer="b", consent_token="tok").reason == "ok"
    (cal,) = gate.calendars()
    assert cal.weeks() == [t // WEEK_NS]
    assert gate.prebuild_windows(t) == 1 and cal.weeks() == [t // WEEK_NS, t // WEEK_NS + 1]
