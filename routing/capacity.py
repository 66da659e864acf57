"""Per-campaign capacity: concurrency, hourly/daily/monthly caps and the daily budget.

Counts are taken when a route's leg is put in use and given back if that leg fails or
expires without a call, so a cap counts calls actually delivered. Windows are the
campaign's local hour, day and month (``LocalTime`` keys); a count taken in a window that
has since rolled over is not given back to the new window.
"""

from __future__ import annotations

from typing import NamedTuple

from .schedule import LocalTime
from .reasons import Refusal


class Limits(NamedTuple):
    concurrency: int | None = None
    hourly: int | None = None
    daily: int | None = None
    monthly: int | None = None
    daily_budget_cents: int | None = None


class Taken(NamedTuple):
    """What a leg took, so exactly that can be given back."""

    hour_key: int
    day_key: int
    month_key: int
    price_cents: int


class Capacity:
    """Mutable counters of one campaign. ``refusal`` is the eligibility check."""

    __slots__ = ("in_use", "hour_key", "hour_n", "day_key", "day_n", "month_key", "month_n", "spend_day_key", "spent_cents")

    def __init__(self) -> None:
        self.in_use = 0
        self.hour_key = self.day_key = self.month_key = self.spend_day_key = -1
        self.hour_n = self.day_n = self.month_n = self.spent_cents = 0

    def counts(self, lt: LocalTime) -> tuple[int, int, int, int]:
        """(hourly, daily, monthly, spent today) as of ``lt``."""
        return (
            self.hour_n if self.hour_key == lt.hour_key else 0,
            self.day_n if self.day_key == lt.day_key else 0,
            self.month_n if self.month_key == lt.month_key else 0,
            self.spent_cents if self.spend_day_key == lt.day_key else 0,
        )

    def refusal(self, limits: Limits, lt: LocalTime, price_cents: int) -> Refusal | None:
        if limits.concurrency is not None and self.in_use >= limits.concurrency:
            return Refusal.CONCURRENCY
        if limits.hourly is not None and (self.hour_n if self.hour_key == lt.hour_key else 0) >= limits.hourly:
            return Refusal.HOURLY_CAP
        if limits.daily is not None and (self.day_n if self.day_key == lt.day_key else 0) >= limits.daily:
            return Refusal.DAILY_CAP
        if limits.monthly is not None and (self.month_n if self.month_key == lt.month_key else 0) >= limits.monthly:
            return Refusal.MONTHLY_CAP
        if limits.daily_budget_cents is not None:
            spent = self.spent_cents if self.spend_day_key == lt.day_key else 0
            if spent + price_cents > limits.daily_budget_cents:
                return Refusal.DAILY_BUDGET
        return None

    def take(self, lt: LocalTime, price_cents: int) -> Taken:
        self.in_use += 1
        if self.hour_key != lt.hour_key:
            self.hour_key, self.hour_n = lt.hour_key, 0
        if self.day_key != lt.day_key:
            self.day_key, self.day_n = lt.day_key, 0
        if self.month_key != lt.month_key:
            self.month_key, self.month_n = lt.month_key, 0
        if self.spend_day_key != lt.day_key:
            self.spend_day_key, self.spent_cents = lt.day_key, 0
        self.hour_n += 1
        self.day_n += 1
        self.month_n += 1
        self.spent_cents += price_cents
        return Taken(lt.hour_key, lt.day_key, lt.month_key, price_cents)

    def recount(self, now: LocalTime, at: LocalTime, price_cents: int, billable: bool) -> None:
        """A delivered leg that ended at ``at``, counted again (after a restart) in the windows
        current at ``now``: an hourly/daily/monthly call if it ended in them, and its price in
        today's spend if it was billable. A leg that began in an earlier window and ended in
        this one counts here (one more than it did: fail closed)."""
        if self.hour_key != now.hour_key:
            self.hour_key, self.hour_n = now.hour_key, 0
        if self.day_key != now.day_key:
            self.day_key, self.day_n = now.day_key, 0
        if self.month_key != now.month_key:
            self.month_key, self.month_n = now.month_key, 0
        if self.spend_day_key != now.day_key:
            self.spend_day_key, self.spent_cents = now.day_key, 0
        self.hour_n += at.hour_key == now.hour_key
        self.day_n += at.day_key == now.day_key
        self.month_n += at.month_key == now.month_key
        if billable and at.day_key == now.day_key:
            self.spent_cents += price_cents

    def release(self) -> None:
        """The leg ended (completed or not): concurrency is free again."""
        if self.in_use > 0:
            self.in_use -= 1

    def give_back(self, taken: Taken, *, spend_only: bool = False) -> None:
        """Undo the counts of a leg that delivered nothing (failed, expired, not billable).

        ``spend_only`` keeps the call counted against caps (it was delivered) but returns
        its price to the daily budget (it was not billable).
        """
        if not spend_only:
            if self.hour_key == taken.hour_key and self.hour_n > 0:
                self.hour_n -= 1
            if self.day_key == taken.day_key and self.day_n > 0:
                self.day_n -= 1
            if self.month_key == taken.month_key and self.month_n > 0:
                self.month_n -= 1
        if self.spend_day_key == taken.day_key:
            self.spent_cents = max(0, self.spent_cents - taken.price_cents)
