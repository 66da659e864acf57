"""Whether one campaign may take one call now: the one eligibility check of the exchange.

Checked cheapest first; the answer is a reason code (a value, never an exception) or None.
``campaign_refusal`` reads the campaign alone (direction, area code, schedule, capacity);
``refusal`` adds what the market knows: the buyer's funds, the repeat-caller index and the
compliance gate's per-buyer verdict. ``c`` is any campaign record with the attributes read
below (the book's ``Standing``); the market is any object with the parts read below (the
exchange's ``Core``).
"""

from __future__ import annotations

from typing import Any, Protocol

from .capacity import Capacity, Limits
from .reasons import Refusal
from .schedule import UTC, CompiledSchedule, LocalClock


class CampaignLike(Protocol):
    accepts_outbound: bool
    area_codes: frozenset[int] | None
    schedule: CompiledSchedule | None
    limits: Limits
    capacity: Capacity


class Funds(Protocol):
    def can_cover(self, account: str, amount_cents: int) -> bool: ...


class Repeats(Protocol):
    def is_repeat(self, buyer: str, caller: str, days: int, now_ns: int) -> bool: ...


class BuyerGate(Protocol):
    def buyer_refusal(self, buyer: str, consumer: Any, direction: str, at_ns: int, campaign: str | None = ...) -> str | None: ...


class Consumer(Protocol):
    @property
    def e164(self) -> str: ...


class Market(Protocol):
    """What the combined check reads besides the campaign."""

    @property
    def clock(self) -> LocalClock: ...
    @property
    def ledger(self) -> Funds: ...
    @property
    def dedupe(self) -> Repeats: ...
    @property
    def gate(self) -> BuyerGate: ...


class Candidate(CampaignLike, Protocol):
    @property
    def account(self) -> str: ...
    @property
    def buyer(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def dedupe_days(self) -> int: ...
    @property
    def bid_cents(self) -> int: ...


def refusal(m: Market, st: Candidate, consumer: Consumer | None, direction: str, area_code: int | None, price: int, now_ns: int) -> str | None:
    """Why campaign ``st`` may not take this call at ``price`` now (None: it may)."""
    why = campaign_refusal(m.clock, st, now_ns, price, direction, area_code)
    if why is not None:
        return why
    if price > 0 and not m.ledger.can_cover(st.account, price):
        return Refusal.FUNDS
    if consumer is not None:
        if m.dedupe.is_repeat(st.buyer, consumer.e164, st.dedupe_days, now_ns):
            return Refusal.DUPLICATE_CALLER
        return m.gate.buyer_refusal(st.buyer, consumer, direction, now_ns, st.id)
    return None


def campaign_refusal(clock: LocalClock, c: CampaignLike, now_ns: int, price_cents: int, direction: str, area_code: int | None) -> str | None:
    if direction == "outbound" and not c.accepts_outbound:
        return Refusal.DIRECTION
    if c.area_codes is not None and area_code not in c.area_codes:
        return Refusal.AREA_CODE
    schedule = c.schedule
    lt = clock.at(schedule.zone if schedule is not None else UTC, now_ns)
    if schedule is not None and not schedule.is_open(lt):
        return Refusal.SCHEDULE
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
    if why == Refusal.HOURLY_CAP:
        ahead: int | None = 60 - lt.minute_of_day % 60
    elif why in (Refusal.DAILY_CAP, Refusal.DAILY_BUDGET):
        ahead = 1440 - lt.minute_of_day
    elif why == Refusal.SCHEDULE and schedule is not None:
        ahead = schedule.minutes_to_open(lt)
    else:
        return None
    return None if ahead is None else (lt.minute_bucket + ahead) * NS_PER_MINUTE


def idle_refusal(m: Market, st: Candidate, now_ns: int) -> str | None:
    """Why ``st`` can take no call at all now, whatever the call (the schedule closed, a cap or
    its daily budget spent, concurrency full, its buyer's funds plus credit below its bid), or
    None. The reasons that depend on the call (direction, area code, the caller) are not
    asked."""
    schedule = st.schedule
    lt = m.clock.at(schedule.zone if schedule is not None else UTC, now_ns)
    if schedule is not None and not schedule.is_open(lt):
        return Refusal.SCHEDULE
    why = st.capacity.refusal(st.limits, lt, st.bid_cents)
    if why is not None:
        return why
    if st.bid_cents > 0 and not m.ledger.can_cover(st.account, st.bid_cents):
        return Refusal.FUNDS
    return None
