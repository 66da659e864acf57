"""Calling windows in local time, pure: is an instant open, and when does it next open.

Steps 13 and 14 of COMPLIANCE.md §6 for a set of candidate zones and state rules: a banned
weekday or holiday (local date) closes the whole day; otherwise the local minute must be in
the federal window and in every state's window for that weekday. ``next_open`` finds the
first instant at which every zone passes, for the ``retry_after`` of temporal denials.
"""

from __future__ import annotations

from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from routing.schedule import NS_PER_MINUTE, LocalTime, local_time

from .instants import NS_PER_DAY, day_start_ns
from .rules import Holidays, StateRule, Window


class Windows:
    """The federal window plus memos (retry answers per closed minute, zone offsets per day)."""

    __slots__ = ("federal", "horizon_days", "_retry", "_offsets")

    def __init__(self, federal: Window, horizon_days: int) -> None:
        self.federal = federal
        self.horizon_days = horizon_days
        self._retry: dict[tuple, int | None] = {}
        self._offsets: dict[tuple, int] = {}

    def restricted(self, lts: list[LocalTime], rules: list[StateRule], holidays: Holidays) -> tuple[str, str] | None:
        """(reason, rule) when these local times are closed (banned day first), else None."""
        for r in rules:
            for lt in lts:
                if r.days[lt.weekday] is None or (r.holidays_banned and holidays.banned(r.state, lt.day_key)):
                    return "state_day_restriction", r.state
        lo, hi = self.federal
        for lt in lts:
            if not lo <= lt.minute_of_day < hi:
                return "outside_calling_hours", "federal"
        for r in rules:
            for lt in lts:
                w = r.days[lt.weekday]
                if w is None or not w[0] <= lt.minute_of_day < w[1]:
                    return "outside_calling_hours", r.state
        return None

    def next_open(self, zones: list[ZoneInfo], rules: list[StateRule], holidays: Holidays, from_ns: int,
                  generation: int, closed: bool = False) -> int | None:
        """The first instant >= ``from_ns`` at which every window is open and no day is banned.

        Only a window's opening can end a closed stretch, so the candidates are the opening
        minutes of each zone's local days. They are visited in time order, one UTC day at a
        time (each zone's offset taken at local noon, which a DST change at 2 a.m. has already
        moved), and each is checked exactly; the first that passes wins. Local times have
        minute resolution, so every instant of a closed minute has the same answer: it is
        memoized per (zones, states, minute, data generation).
        """
        if not closed and self.restricted([local_time(z, from_ns) for z in zones], rules, holidays) is None:
            return from_ns
        key = (tuple(zones), tuple(r.state for r in rules), from_ns // NS_PER_MINUTE, generation)
        hit = self._retry.get(key, 0)
        if hit != 0:
            return hit
        opens = {self.federal[0]}
        for r in rules:
            opens.update(w[0] for w in r.days if w is not None)
        starts = sorted(opens)
        first_day = [local_time(z, from_ns).day_key for z in zones]
        found = None
        for k in range(self.horizon_days + 1):
            lo, hi = from_ns + k * NS_PER_DAY, from_ns + (k + 1) * NS_PER_DAY
            batch = []
            for z, d0 in zip(zones, first_day):
                for d in (d0 + k - 1, d0 + k, d0 + k + 1):
                    base = day_start_ns(d) - self._offset(z, d)
                    for m in starts:
                        t = base + m * NS_PER_MINUTE
                        if lo < t < hi or (k and t == lo):
                            batch.append(t)
            for t in sorted(batch):
                if self.restricted([local_time(z, t) for z in zones], rules, holidays) is None:
                    found = t
                    break
            if found is not None:
                break
        if len(self._retry) > 50_000:
            self._retry.clear()
        self._retry[key] = found
        return found

    def _offset(self, z: ZoneInfo, day: int) -> int:
        """The zone's UTC offset (ns) at local noon of ``day``."""
        key = (z, day)
        off = self._offsets.get(key)
        if off is None:
            if len(self._offsets) > 100_000:
                self._offsets.clear()
            delta = z.utcoffset(datetime.combine(date.fromordinal(day), time(12)))
            off = self._offsets[key] = int(delta.total_seconds()) * 1_000_000_000 if delta is not None else 0
        return off
