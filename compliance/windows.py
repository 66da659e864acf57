"""Calling windows in local time, pure: is an instant open, and when does it next open.

Steps 13 and 14 of COMPLIANCE.md §6 for a set of candidate zones and state rules: a banned
weekday or holiday (local date) closes the whole day; otherwise the local minute must be in
the federal window and in every state's window for that weekday (``restricted``).

The gate does not evaluate that per call. For each candidate set (zones x states) a
``Calendar`` keeps one ``Week`` table per UTC week: the instants at which the answer can
change, which are every zone's local midnights and window edges (open and close, federal
and state) plus its UTC-offset changes (DST). Between two such instants every zone keeps its
offset and no local minute crosses an edge or a date, so the answer is constant: the table
stores it once per segment, evaluated with ``restricted`` on the exact local times, and for
each segment the start of the next open one. A decision is then one ``bisect`` (status) and,
for a temporal denial, one list read (``retry_after``): the first open instant, searched up
to ``retry_horizon_days`` + 1 days ahead. A table is built on the first decision of its week
(a few hundred microseconds), or ahead of time by ``Windows.prebuild``, which the runtime's
refresher calls for this week and the next; tables are dropped when the holidays change.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import datetime
from zoneinfo import ZoneInfo

from routing.schedule import NS_PER_MINUTE, LocalTime, local_time

from .instants import NS, NS_PER_DAY
from .rules import Holidays, StateRule, Window, zone

WEEK_NS = 7 * NS_PER_DAY
_SAMPLE_NS = 6 * 3_600 * NS  # offsets are sampled this often; tz changes are further apart
Why = tuple[str, str] | None


def restricted(lts: list[LocalTime], rules: list[StateRule], federal: Window, holidays: Holidays) -> Why:
    """(reason, rule) when these local times are closed (banned day first), else None."""
    for r in rules:
        for lt in lts:
            if r.days[lt.weekday] is None or (r.holidays_banned and holidays.banned(r.state, lt.day_key)):
                return "state_day_restriction", r.state
    lo, hi = federal
    for lt in lts:
        if not lo <= lt.minute_of_day < hi:
            return "outside_calling_hours", "federal"
    for r in rules:
        for lt in lts:
            w = r.days[lt.weekday]
            if w is None or not w[0] <= lt.minute_of_day < w[1]:
                return "outside_calling_hours", r.state
    return None


def _offset_ns(z: ZoneInfo, minute: int) -> int:
    """The zone's UTC offset at the start of UNIX minute ``minute`` (as ``local_time`` sees it)."""
    delta = datetime.fromtimestamp(minute * 60, z).utcoffset()
    return int(delta.total_seconds()) * NS if delta is not None else 0


def offset_segments(z: ZoneInfo, a: int, b: int) -> list[tuple[int, int, int]]:
    """``[(start, end, offset_ns)]`` covering ``[a, b)`` (whole minutes), one per UTC offset.

    The offset is sampled every 6 hours and at the last minute; between two samples that
    differ, a bisection finds the first minute with the new offset (zones change offset at
    most once in 6 hours)."""
    m_a, m_b = a // NS_PER_MINUTE, -(-b // NS_PER_MINUTE)
    samples = list(range(m_a, m_b, _SAMPLE_NS // NS_PER_MINUTE))
    if samples[-1] != m_b - 1:
        samples.append(m_b - 1)
    offs = [_offset_ns(z, m) for m in samples]
    out = []
    start = m_a
    for k in range(1, len(samples)):
        if offs[k] != offs[k - 1]:
            lo, hi = samples[k - 1], samples[k]
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset_ns(z, mid) == offs[k - 1]:
                    lo = mid
                else:
                    hi = mid
            out.append((start * NS_PER_MINUTE, hi * NS_PER_MINUTE, offs[k - 1]))
            start = hi
    out.append((start * NS_PER_MINUTE, m_b * NS_PER_MINUTE, offs[-1]))
    return out


class Week:
    """One UTC week of one candidate set: segment starts, their answer, the next opening."""

    __slots__ = ("start", "bounds", "why", "next_open")

    def __init__(self, start: int, bounds: list[int], why: list[Why]) -> None:
        self.start, self.bounds, self.why = start, bounds, why
        nxt = [-1] * len(bounds)  # the start of the first open segment after segment i, -1: not this week
        after = -1
        for i in range(len(bounds) - 1, -1, -1):
            nxt[i] = after
            if why[i] is None:
                after = bounds[i]
        self.next_open = nxt


class Calendar:
    """The windows of one candidate set: every zone, every state rule."""

    __slots__ = ("zones", "rules", "federal", "horizon_ns", "_edges", "_weeks", "_holidays")

    def __init__(self, zones: list[ZoneInfo], rules: list[StateRule], federal: Window, horizon_days: int) -> None:
        self.zones, self.rules, self.federal = zones, rules, federal
        self.horizon_ns = (horizon_days + 1) * NS_PER_DAY
        edges = {0, federal[0], federal[1]}
        for r in rules:
            for w in r.days:
                if w is not None:
                    edges.update(w)
        self._edges = sorted(m * NS_PER_MINUTE for m in edges if m < 1440)
        self._weeks: dict[int, Week] = {}
        self._holidays: Holidays | None = None

    def status(self, at_ns: int, holidays: Holidays) -> Why:
        """What ``restricted`` says at ``at_ns`` in every zone (None: open)."""
        wk = self._week(at_ns // WEEK_NS, holidays)
        return wk.why[bisect_right(wk.bounds, at_ns) - 1]

    def next_open(self, from_ns: int, holidays: Holidays, closed: bool = False) -> int | None:
        """The first instant >= ``from_ns`` at which every window is open and no day is banned,
        or None when there is none within the horizon. ``closed``: ``from_ns`` is known closed."""
        w = from_ns // WEEK_NS
        wk = self._week(w, holidays)
        i = bisect_right(wk.bounds, from_ns) - 1
        if not closed and wk.why[i] is None:
            return from_ns
        limit = from_ns + self.horizon_ns
        t = wk.next_open[i]
        while t < 0:
            w += 1
            if w * WEEK_NS >= limit:
                return None
            wk = self._week(w, holidays)
            t = wk.bounds[0] if wk.why[0] is None else wk.next_open[0]
        return t if t < limit else None

    def weeks(self) -> list[int]:
        """The weeks whose tables are built (for reports and benchmarks)."""
        return sorted(self._weeks)

    def ensure(self, w: int, holidays: Holidays) -> bool:
        """Build week ``w``'s table now if it is missing (True when it was built)."""
        if holidays is self._holidays and w in self._weeks:
            return False
        self._week(w, holidays)
        return True

    def _week(self, w: int, holidays: Holidays) -> Week:
        if holidays is not self._holidays:
            self._weeks.clear()
            self._holidays = holidays
        wk = self._weeks.get(w)
        if wk is None:
            if len(self._weeks) >= 8:
                self._weeks.clear()
            wk = self._weeks[w] = self.build(w, holidays)
        return wk

    def build(self, w: int, holidays: Holidays) -> Week:
        """The table of UTC week ``w`` (weeks count from the epoch)."""
        a = w * WEEK_NS
        b = a + WEEK_NS
        cuts = {a}
        for z in self.zones:
            for s, e, off in offset_segments(z, a, b):
                cuts.add(s)
                for d in range((s + off) // NS_PER_DAY, (e - 1 + off) // NS_PER_DAY + 1):
                    base = d * NS_PER_DAY - off
                    for edge in self._edges:
                        t = base + edge
                        if s <= t < e:
                            cuts.add(t)
        bounds: list[int] = []
        why: list[Why] = []
        for t in sorted(cuts):
            y = restricted([local_time(z, t) for z in self.zones], self.rules, self.federal, holidays)
            if not why or y != why[-1]:
                bounds.append(t)
                why.append(y)
        return Week(a, bounds, why)


class Windows:
    """The federal window, the retry horizon, and one ``Calendar`` per candidate set."""

    __slots__ = ("federal", "horizon_days", "states", "_calendars")

    def __init__(self, federal: Window, horizon_days: int, states: dict[str, StateRule]) -> None:
        self.federal = federal
        self.horizon_days = horizon_days
        self.states = states
        self._calendars: dict[tuple[tuple[str, ...], tuple[str, ...]], Calendar | None] = {}

    def calendar(self, zones: tuple[str, ...], states: tuple[str, ...]) -> Calendar | None:
        """The calendar of these candidate zone names and states (None: no zone to check)."""
        key = (zones, states)
        try:
            return self._calendars[key]
        except KeyError:
            pass
        if len(self._calendars) >= 4096:
            self._calendars.clear()
        cal = None
        if zones:
            cal = Calendar([zone(n) for n in zones], [self.states[s] for s in states if s in self.states],
                           self.federal, self.horizon_days)
        self._calendars[key] = cal
        return cal

    def calendars(self) -> list[Calendar]:
        """Every calendar built so far (for reports and benchmarks)."""
        return [c for c in self._calendars.values() if c is not None]

    def prebuild(self, at_ns: int, holidays: Holidays, limit: int) -> int:
        """Build at most ``limit`` missing tables of the week of ``at_ns`` and the next one, for
        every calendar known, so that decisions do not build them; returns how many were built."""
        w = at_ns // WEEK_NS
        built = 0
        for cal in self.calendars():
            for wk in (w, w + 1):
                if built >= limit:
                    return built
                built += cal.ensure(wk, holidays)
        return built
