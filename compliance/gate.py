"""The compliance gate, pure: every call passes it before the auction, and it fails closed.

This is the core subset of COMPLIANCE.md §6 (first match wins): request validation,
number validation, the inbound allow, the US-only and geographic-number rules, the internal
suppression list and the federal calling window in every candidate zone of the consumer's
area code. The gate splits into a call-level check (``check``) and a per-buyer check
(``buyer_refusal``) that the auction applies to each candidate, because some rules (a
buyer-scoped opt-out) depend on who would receive the call.
"""

from __future__ import annotations

from typing import NamedTuple
from zoneinfo import ZoneInfo

from routing.schedule import LocalClock

from .numbers import NPA_TABLE_VERSION, NumberInfo, is_us_region
from .suppression import SuppressionList

GATE_VERSION = "gate-core-1"
FEDERAL_OPEN_MIN = 8 * 60  # [08:00, 21:00) local, half-open: COMPLIANCE.md §1.1
FEDERAL_CLOSE_MIN = 21 * 60


class Verdict(NamedTuple):
    allow: bool
    reason: str
    rule: str | None = None


class Gate:
    """Call-level and per-buyer compliance checks over in-memory stores."""

    __slots__ = ("suppressions", "_clock", "_zones")

    def __init__(self, suppressions: SuppressionList | None = None, clock: LocalClock | None = None) -> None:
        self.suppressions = suppressions if suppressions is not None else SuppressionList()
        self._clock = clock if clock is not None else LocalClock()
        self._zones: dict[str, ZoneInfo] = {}

    def evidence(self) -> dict[str, str | int]:
        """The data versions a decision used: stored with every decision record."""
        return {"gate": GATE_VERSION, "npa_table": NPA_TABLE_VERSION, "suppressions": self.suppressions.version}

    def check(self, direction: str, consumer: NumberInfo | None, at_ns: int) -> Verdict:
        try:
            return self._check(direction, consumer, at_ns)
        except Exception:  # fail closed: a broken rule denies, never allows
            return Verdict(False, "internal_error")

    def _check(self, direction: str, consumer: NumberInfo | None, at_ns: int) -> Verdict:
        if direction not in ("inbound", "outbound") or not isinstance(at_ns, int):
            return Verdict(False, "invalid_request")
        if consumer is None:
            return Verdict(False, "invalid_number")
        if direction == "inbound":
            return Verdict(True, "inbound_consumer_initiated")
        if not is_us_region(consumer.region):
            return Verdict(False, "non_us_number")
        if not consumer.geographic:
            return Verdict(False, "non_geographic_number")
        hit = self.suppressions.hit(consumer.e164, None, at_ns)
        if hit is not None:
            return Verdict(False, "internal_dnc", hit.scope)
        if not consumer.zones:
            return Verdict(False, "internal_error")
        for name in consumer.zones:
            zone = self._zones.get(name)
            if zone is None:
                zone = self._zones[name] = ZoneInfo(name)
            m = self._clock.at(zone, at_ns).minute_of_day
            if not FEDERAL_OPEN_MIN <= m < FEDERAL_CLOSE_MIN:
                return Verdict(False, "outside_calling_hours", "federal")
        return Verdict(True, "ok")

    def buyer_refusal(self, buyer: str, consumer: NumberInfo, direction: str, at_ns: int) -> str | None:
        """A reason this buyer may not receive the call, or None. Outbound only (§1.7)."""
        if direction != "outbound":
            return None
        hit = self.suppressions.hit(consumer.e164, buyer, at_ns)
        return "internal_dnc" if hit is not None else None
