"""Whether one campaign may take one call now, ignoring money and the caller's history.

Checked cheapest first; the answer is a reason code (a value, never an exception) or None.
``c`` is any campaign record with the attributes read below (the book's ``Standing``).
Funds, repeat callers and per-buyer compliance are checked by the pipeline, which owns
the ledger, the dedupe index and the gate.
"""

from __future__ import annotations

from typing import Protocol

from .capacity import Capacity, Limits
from .schedule import UTC, CompiledSchedule, LocalClock


class CampaignLike(Protocol):
    accepts_outbound: bool
    area_codes: frozenset[int] | None
    schedule: CompiledSchedule | None
    limits: Limits
    capacity: Capacity


def campaign_refusal(clock: LocalClock, c: CampaignLike, now_ns: int, price_cents: int, direction: str, area_code: int | None) -> str | None:
    if direction == "outbound" and not c.accepts_outbound:
        return "direction"
    if c.area_codes is not None and area_code not in c.area_codes:
        return "area_code"
    schedule = c.schedule
    lt = clock.at(schedule.zone if schedule is not None else UTC, now_ns)
    if schedule is not None and not schedule.is_open(lt):
        return "schedule"
    return c.capacity.refusal(c.limits, lt, price_cents)


NS_PER_MINUTE = 60_000_000_000


def reopens_at(clock: LocalClock, c: CampaignLike, why: str, now_ns: int) -> int | None:
    """The first UTC instant at which refusal ``why`` (a time rule) may no longer hold for
    ``c``: the next local hour or day for hourly and daily caps and the daily budget, the
    schedule's next opening; None where only an event or a later check can tell (concurrency,
    the monthly cap). The local calendar moves at whole minutes, so the edges are counted in
    local minutes from now; across a daylight-saving change the estimate may be off by the
    change, which the parking lot's hourly re-check absorbs."""
    schedule = c.schedule
    lt = clock.at(schedule.zone if schedule is not None else UTC, now_ns)
    if why == "hourly_cap":
        ahead: int | None = 60 - lt.minute_of_day % 60
    elif why in ("daily_cap", "daily_budget"):
        ahead = 1440 - lt.minute_of_day
    elif why == "schedule" and schedule is not None:
        ahead = schedule.minutes_to_open(lt)
    else:
        return None
    return None if ahead is None else (lt.minute_bucket + ahead) * NS_PER_MINUTE
