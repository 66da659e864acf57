"""A campaign as the book holds it: compiled once from the buyer's message (schedule, caps,
states), mutable where the market moves it (price, pause, counters, its place in the index)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from billing.postings import buyer_account

from .attestation import ModifierSpec, compile_multipliers, level_of
from .capacity import Capacity, Limits
from .schedule import CompiledSchedule, to_ns

if TYPE_CHECKING:
    from .book import Bucket

WIDE_STATES = 8
US_STATES = frozenset(
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY "
    "NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR GU VI AS MP".split()
)
Key = tuple[str, str]  # (buyer id, campaign id)

class CampaignError(ValueError):
    """A campaign the book refuses (nothing in the book changes): a reason ``code`` and the
    JSON path of the field at fault, turned into the wire's error at the edge."""

    def __init__(self, code: str, message: str, path: str) -> None:
        super().__init__(message)
        self.code, self.path = code, path


class CampaignSpec(Protocol):
    """What the book reads of a campaign message (``exchange.messages.Campaign``)."""

    @property
    def id(self) -> str: ...
    @property
    def vertical(self) -> str: ...
    @property
    def bid_cents(self) -> int: ...
    @property
    def states(self) -> Sequence[str]: ...
    @property
    def area_codes(self) -> Sequence[int] | None: ...
    @property
    def schedule(self) -> ScheduleSpec | None: ...
    @property
    def caps(self) -> CapsSpec | None: ...
    @property
    def daily_budget_cents(self) -> int | None: ...
    @property
    def expires_at(self) -> datetime | None: ...
    @property
    def paused(self) -> bool: ...
    @property
    def rtb(self) -> bool: ...
    @property
    def min_duration_s(self) -> int: ...
    @property
    def dedupe_days(self) -> int: ...
    @property
    def destination(self) -> str: ...
    @property
    def accepts_outbound(self) -> bool: ...
    @property
    def min_attestation(self) -> str | None: ...
    @property
    def bid_modifiers(self) -> ModifiersSpec | None: ...
    @property
    def max_publisher_risk(self) -> int | None: ...
    @property
    def cancel_on_disconnect(self) -> bool: ...


class ModifiersSpec(Protocol):
    @property
    def attestation(self) -> ModifierSpec | None: ...


class ScheduleSpec(Protocol):
    @property
    def tz(self) -> str: ...
    @property
    def hours(self) -> Mapping[Any, Sequence[tuple[str, str]]]: ...


class CapsSpec(Protocol):
    @property
    def concurrency(self) -> int | None: ...
    @property
    def hourly(self) -> int | None: ...
    @property
    def daily(self) -> int | None: ...
    @property
    def monthly(self) -> int | None: ...

class Standing:
    """A campaign as the book holds it (mutable: price, pause, counters)."""

    __slots__ = (
        "key", "buyer", "id", "vertical", "bid_cents", "seq", "states", "wide_states", "area_codes",
        "schedule", "limits", "expires_ns", "paused", "rtb", "min_duration_s", "dedupe_days",
        "destination", "accepts_outbound", "capacity", "buckets", "live", "account", "listing", "listed_bid", "parked", "slot",
        "off", "min_level", "multipliers", "max_risk", "spec", "cancel_on_disconnect", "away",
    )

    def __init__(self, buyer: str, msg: CampaignSpec, capacity: Capacity) -> None:
        self.key = (buyer, msg.id)
        self.buyer, self.id, self.vertical = buyer, msg.id, msg.vertical
        self.account = buyer_account(buyer)  # the buyer's ledger account, for the funds check
        self.bid_cents = msg.bid_cents
        self.seq = 0  # time priority of the current price
        self.slot = -1  # its index in the book's slots (the heap entries name it)
        self.listing = -1  # seq of the heap entries that count (-1: not listed)
        self.listed_bid = 0  # their price: an upper bound of bid_cents while listed
        self.states = frozenset(msg.states)
        wide = not msg.states or len(self.states) > WIDE_STATES
        self.wide_states = (self.states or None) if wide else None
        self.area_codes = frozenset(msg.area_codes) if msg.area_codes else None
        self.schedule = CompiledSchedule.compile(msg.schedule.tz, msg.schedule.hours) if msg.schedule else None
        caps = msg.caps
        self.limits = Limits(
            caps.concurrency if caps else None, caps.hourly if caps else None, caps.daily if caps else None,
            caps.monthly if caps else None, msg.daily_budget_cents,
        )
        self.expires_ns = to_ns(msg.expires_at) if msg.expires_at is not None else None
        self.paused, self.rtb = msg.paused, msg.rtb
        self.min_duration_s, self.dedupe_days = msg.min_duration_s, msg.dedupe_days
        self.destination, self.accepts_outbound = msg.destination, msg.accepts_outbound
        self.capacity = capacity
        self.buckets: list[Bucket] = []
        self.live = True
        self.parked: str | None = None  # why it is out of the index for now (``routing/parking.py``)
        self.off: str | None = None  # the reason its buckets count it as out of the index (parked or paused)
        # call quality (routing/attestation.py, exchange/quality.py): the lowest attestation level taken, the bid
        # multipliers per level (None: all 1, nothing to adjust), the highest publisher risk score taken (100: any)
        self.min_level = level_of(msg.min_attestation)
        self.multipliers = compile_multipliers(msg.bid_modifiers.attestation if msg.bid_modifiers is not None else None)
        self.max_risk = msg.max_publisher_risk if msg.max_publisher_risk is not None else 100
        self.spec = msg  # the message it was made from: what the book store saves (with the live price and pause)
        self.cancel_on_disconnect = msg.cancel_on_disconnect
        self.away = False  # cancel_on_disconnect and its buyer has no open socket: held out like a pause

    @property
    def held(self) -> bool:
        """Out of the market by its buyer's doing: paused, or away (``cancel_on_disconnect``)."""
        return self.paused or self.away

    def covers(self, state: str | None) -> bool:
        return not self.states or state in self.states

    def expired(self, now_ns: int) -> bool:
        return self.expires_ns is not None and self.expires_ns <= now_ns
