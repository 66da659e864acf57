"""Outbound calls at any hour of the run: callees inside their calling window, and when no US
zone is inside one, a server whose wall clock runs a few hours ahead.

The gate applies the federal window ``[08:00, 21:00)`` local (and state windows) to every
outbound call, and the US (with its territories, UTC-11 to UTC+10) has no zone inside it
between about 09:00 and 13:00 UTC: a test that needs an outbound call routed cannot get one
from a server on the real clock then. ``outbound_plan`` picks a band that stays open for the
next ``margin`` (the tests' own 09:00-19:00, inside every state window) and, when none does,
the smallest forward shift on the same UTC date that opens one. ``start_server(clock_shift_s=)``
runs the server under ``python -m tests.e2e.shifted`` with that shift; the test side keeps the
real clock, so what it sends (consent times, today's snapshot date) lies in the server's past
or today, as a client a few hours behind would send it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

# One exchange prefix per zone band, west to east (and Guam across the date line).
BANDS = [("+1808586", "Pacific/Honolulu"), ("+1415555", "America/Los_Angeles"), ("+1312555", "America/Chicago"),
         ("+1212555", "America/New_York"), ("+1787555", "America/Puerto_Rico"), ("+1671555", "Pacific/Guam")]
STEP = timedelta(minutes=15)


class OutboundPlan(NamedTuple):
    shift_s: int  # how far ahead the server's wall clock runs (0: the real clock)
    prefix: str  # a band open at the server's now and for the margin after it

    def numbers(self, n: int, first: int = 1230) -> list[str]:
        return [f"{self.prefix}{first + i:04d}" for i in range(n)]


def _open(prefix_zone: tuple[str, str], at: datetime, margin: timedelta) -> bool:
    zone = ZoneInfo(prefix_zone[1])
    return all(9 <= (at + d).astimezone(zone).hour < 19 for d in (timedelta(0), margin / 2, margin))


def outbound_plan(now: datetime | None = None, margin: timedelta = timedelta(minutes=45)) -> OutboundPlan:
    now = now or datetime.now(UTC)
    shift = timedelta(0)
    while (now + shift).date() == now.date():
        for band in BANDS:
            if _open(band, now + shift, margin):
                return OutboundPlan(int(shift.total_seconds()), band[0])
        shift += STEP
    raise AssertionError(f"no band opens later on {now.date()}")  # cannot happen: see the test of this module
