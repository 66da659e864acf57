"""Campaign schedules in the campaign's own time zone, and a per-minute local-time memo.

Schedules are minute-precise ("09:00"-"17:30") and every modern zone offset is a whole
number of minutes, so the local calendar fields of a zone only change at minute
boundaries: ``LocalClock`` computes them once per zone per minute, which turns the
per-candidate schedule check into two integer comparisons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

NS_PER_MINUTE = 60_000_000_000
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
UTC = ZoneInfo("UTC")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def to_ns(dt: datetime) -> int:
    """An aware datetime as UNIX nanoseconds (exact to the microsecond)."""
    return (dt - EPOCH) // _US * 1000


class LocalTime(NamedTuple):
    """Calendar fields of one instant in one zone (minute resolution)."""

    minute_bucket: int  # UNIX minutes: the memo key
    weekday: int  # 0 = Monday
    minute_of_day: int
    hour_key: int  # distinct per local hour
    day_key: int  # proleptic ordinal of the local date
    month_key: int  # year * 12 + month - 1


def local_time(zone: ZoneInfo, now_ns: int) -> LocalTime:
    bucket = now_ns // NS_PER_MINUTE
    dt = datetime.fromtimestamp(bucket * 60, zone)
    day = dt.toordinal()
    return LocalTime(bucket, dt.weekday(), dt.hour * 60 + dt.minute, day * 24 + dt.hour, day, dt.year * 12 + dt.month - 1)


class LocalClock:
    """Memo of ``local_time`` per zone for the current minute. Bounded by the number of zones."""

    __slots__ = ("_memo",)

    def __init__(self) -> None:
        self._memo: dict[ZoneInfo, LocalTime] = {}

    def at(self, zone: ZoneInfo, now_ns: int) -> LocalTime:
        hit = self._memo.get(zone)
        if hit is not None and hit.minute_bucket == now_ns // NS_PER_MINUTE:
            return hit
        lt = local_time(zone, now_ns)
        self._memo[zone] = lt
        return lt


class ScheduleError(ValueError):
    """A schedule that cannot be compiled; ``path`` names the bad field."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


def zone_named(name: str, path: str = "$.schedule.tz") -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(f"unknown time zone {name!r}", path) from None


def _minutes(hhmm: str) -> int:
    return int(hhmm[:2]) * 60 + int(hhmm[3:])


class CompiledSchedule:
    """Open intervals per weekday as half-open minute ranges ``[start, end)``."""

    __slots__ = ("zone", "days")

    def __init__(self, zone: ZoneInfo, days: tuple[tuple[tuple[int, int], ...], ...]) -> None:
        self.zone = zone
        self.days = days

    @classmethod
    def compile(cls, tz: str, hours: Mapping[Any, Sequence[tuple[str, str]]]) -> CompiledSchedule:
        zone = zone_named(tz)
        days = []
        for name in WEEKDAYS:
            spans = []
            for i, (start, end) in enumerate(hours.get(name, ())):
                a, b = _minutes(start), _minutes(end)
                if a >= b:
                    raise ScheduleError(f"interval {start}-{end} must end after it starts", f"$.schedule.hours.{name}[{i}]")
                spans.append((a, b))
            days.append(tuple(sorted(spans)))
        return cls(zone, tuple(days))

    def minutes_to_open(self, lt: LocalTime) -> int | None:
        """Local minutes from ``lt`` to the next opening (0 if open now); None if never open."""
        m = lt.minute_of_day
        for ahead in range(8):
            for a, b in self.days[(lt.weekday + ahead) % 7]:
                if ahead == 0:
                    if a <= m < b:
                        return 0
                    if a > m:
                        return a - m
                else:
                    return ahead * 1440 + a - m
        return None

    def is_open(self, lt: LocalTime) -> bool:
        m = lt.minute_of_day
        for a, b in self.days[lt.weekday]:
            if a <= m < b:
                return True
        return False
