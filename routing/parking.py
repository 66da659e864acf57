"""The parking lot of the book: campaigns that cannot take any call for a known period.

A decision that finds a campaign refused for a reason that holds for every call until some
event (its buyer cannot cover the bid, its schedule is closed, a cap, its daily budget or its
concurrency is spent) parks it: the book takes it out of the ranked index, and this lot
remembers what brings it back. The next decisions then pop only campaigns that can take calls,
whatever the rest of the book holds. A campaign comes back, at its old time priority, on:

- ``funds``: its buyer's spendable funds (available plus credit) reaching its bid. The ledger
  names the accounts whose funds went up (a deposit, a released hold, a credit change, a refund;
  ``Ledger.freed``); a parked campaign repriced down is looked at again too. Each buyer's parked
  campaigns wait in a min-heap by bid, so a deposit wakes exactly the ones it covers.
- ``concurrency``, caps and ``daily_budget``: a leg of that campaign released or given back
  (``capacity_freed``), or the window's edge (the next local hour, day, month: a timer);
  ``daily_budget`` also when the campaign is repriced down.
- ``schedule``: the schedule's next opening (a timer).

Timers are UTC instants in a heap, read before each decision (``wake``). None waits more than
``MAX_WAIT_NS`` (an hour): a campaign parked on a time rule is looked at again at least hourly,
which bounds any error of the edge computation (a daylight-saving change inside the wait) to
one cheap re-check, never a campaign hidden while it could sell. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heapify, heappop, heappush
from typing import TYPE_CHECKING

from .reasons import Refusal

if TYPE_CHECKING:
    from .standing import Standing
    from .capacity import Capacity

FUNDS = Refusal.FUNDS
CAPACITY = frozenset({Refusal.CONCURRENCY, Refusal.HOURLY_CAP, Refusal.DAILY_CAP, Refusal.MONTHLY_CAP, Refusal.DAILY_BUDGET})
TIMED = CAPACITY | {Refusal.SCHEDULE}
PARKABLE = TIMED | {FUNDS}
MAX_WAIT_NS = 3_600_000_000_000


class Wanting(list[tuple[int, int, "Standing"]]):
    """One account's campaigns parked for funds: a min-heap of (bid, tie-break, campaign), compacted
    when it outgrows ``limit``."""

    __slots__ = ("limit",)

    def __init__(self) -> None:
        super().__init__()
        self.limit = 64


class ParkingLot:
    __slots__ = ("count", "_relist", "_wanting", "_recheck", "_timers", "_tick", "_on_capacity")

    def __init__(self, relist: Callable[[Standing], None]) -> None:
        self.count = 0  # campaigns parked now
        self._relist = relist  # the book's: back into the index at the campaign's time priority
        self._wanting: dict[str, Wanting] = {}  # ledger account -> its campaigns parked for funds
        self._recheck: set[str] = set()  # accounts with a funds-parked campaign repriced since the last wake
        self._timers: list[tuple[int, int, Standing]] = []  # (wake at ns, tie-break, campaign)
        self._tick = 0
        self._on_capacity: dict[Capacity, Standing] = {}

    def park(self, s: Standing, why: str, wake_ns: int | None, now_ns: int) -> None:
        """Record ``s`` (already out of the index) as parked for ``why``."""
        s.parked = why
        self.count += 1
        if why == FUNDS:
            self._want(s)
            return
        self._tick += 1
        heappush(self._timers, (min(wake_ns if wake_ns is not None else now_ns + MAX_WAIT_NS, now_ns + MAX_WAIT_NS), self._tick, s))
        if why in CAPACITY:
            self._on_capacity[s.capacity] = s

    def unpark(self, s: Standing) -> None:
        s.parked = None
        self.count -= 1
        if s.live and not s.held:
            self._relist(s)

    def forget(self, s: Standing) -> None:
        """``s`` leaves the lot without being re-listed here (replaced, or resumed: listed anew)."""
        if s.parked is not None:
            s.parked = None
            self.count -= 1

    def repriced(self, s: Standing, old_bid: int) -> None:
        if s.bid_cents >= old_bid:  # a raise brings nothing back, and keeps the entries it has
            return
        if s.parked == FUNDS:
            self._want(s)
            self._recheck.add(s.account)
        elif s.parked == Refusal.DAILY_BUDGET:
            self.unpark(s)

    def capacity_freed(self, capacity: Capacity) -> None:
        """A leg of this capacity was released or its counts given back."""
        s = self._on_capacity.pop(capacity, None)
        if s is not None and s.parked in CAPACITY and s.live and s.capacity is capacity:
            self.unpark(s)

    def _want(self, s: Standing) -> None:
        """An entry keyed by ``s``'s bid now. A campaign parked for funds always has an entry keyed
        at or below its bid (pushed when parked, and at each price cut; a raise keeps the old one),
        so a wake that covers its bid pops it; one popped whose bid has risen past the funds is
        pushed again at its bid. (Pushing at every reprice, as before, cost an unfunded buyer's
        bid ~5x a funded one's: ``bench.ingest`` with the buyer unfunded.)"""
        heap = self._wanting.get(s.account)
        if heap is None:
            heap = self._wanting[s.account] = Wanting()
        self._tick += 1
        heappush(heap, (s.bid_cents, self._tick, s))
        if len(heap) > heap.limit:  # repriced while parked: one entry per campaign, its lowest
            low: dict[int, tuple[int, int, Standing]] = {}
            for e in heap:
                c = e[2]
                if c.parked == FUNDS and c.live:
                    k = id(c)
                    if k not in low or e < low[k]:
                        low[k] = e
            heap[:] = low.values()
            heapify(heap)
            heap.limit = 2 * len(heap) + 64  # amortised O(1) a push, whatever the rest of the lot holds

    def wake(self, now_ns: int, freed: set[str], spendable: Callable[[str], int]) -> int:
        """Bring back what is due: timers up to ``now_ns`` and the funds-parked campaigns of
        the accounts in ``freed`` (emptied here) that their funds now cover. Returns how many."""
        back = 0
        timers = self._timers
        while timers and timers[0][0] <= now_ns:
            s = heappop(timers)[2]
            if s.parked in TIMED:
                self._on_capacity.pop(s.capacity, None)
                self.unpark(s)
                back += 1
        if self._recheck:
            freed |= self._recheck
            self._recheck.clear()
        if freed and self._wanting:
            for account in freed:
                heap = self._wanting.get(account)
                if not heap:
                    continue
                can = spendable(account)
                again: list[Standing] = []
                while heap and heap[0][0] <= can:
                    s = heappop(heap)[2]
                    if s.parked == FUNDS and s.live:
                        if s.bid_cents <= can:
                            self.unpark(s)
                            back += 1
                        else:  # raised since that entry: wanted at its bid now
                            again.append(s)
                for s in dict.fromkeys(again):  # (once each, however many of its entries were popped)
                    if s.parked == FUNDS:  # (one entry unparked it, another was popped after)
                        self._want(s)
                if not heap:
                    del self._wanting[account]
        freed.clear()
        return back
