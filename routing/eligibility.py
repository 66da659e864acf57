"""Whether one campaign may take one call now, ignoring money and the caller's history.

Checked cheapest first; the answer is a reason code (a value, never an exception) or None.
Funds, repeat callers and per-buyer compliance are checked by the pipeline, which owns
the ledger, the dedupe index and the gate.
"""

from __future__ import annotations

from .capacity import Capacity, Limits
from .schedule import UTC, CompiledSchedule, LocalClock


def campaign_refusal(
    *,
    clock: LocalClock,
    now_ns: int,
    price_cents: int,
    direction: str,
    area_code: int | None,
    accepts_outbound: bool,
    area_codes: frozenset[int] | None,
    schedule: CompiledSchedule | None,
    limits: Limits,
    capacity: Capacity,
) -> str | None:
    if direction == "outbound" and not accepts_outbound:
        return "direction"
    if area_codes is not None and area_code not in area_codes:
        return "area_code"
    lt = clock.at(schedule.zone if schedule is not None else UTC, now_ns)
    if schedule is not None and not schedule.is_open(lt):
        return "schedule"
    return capacity.refusal(limits, lt, price_cents)
