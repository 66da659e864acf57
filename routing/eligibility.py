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
