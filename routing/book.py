"""The order book, pure: standing bids indexed so a call never scans the whole book.

Index: one max-heap per (vertical, state) for campaigns that target a few states, plus one
per vertical for wide campaigns (all states, or more than ``WIDE_STATES``), which carry a
state filter. Heap entries are ``(-price, listing, slot)``: integers only, so the garbage
collector untracks them on its first pass and never walks the heaps again (entries holding the
campaign object made every young collection read ~100,000 old objects at 100K campaigns:
6-77 ms pauses, and 200 ms for the next generation, under the load test's bid stream). A
campaign's ``slot`` indexes ``Book._slots``; a replaced campaign keeps its slot. A campaign is
*listed* at a price in all its buckets, and only entries of its current listing count (listings
are global sequence numbers, never reused, so an entry of a replaced campaign is stale too);
older ones are dropped when they surface, and a heap past 1.5 times its live entries is
rebuilt, so memory stays bounded.

A reprice upward lists the campaign anew (one heap push per bucket). A reprice downward
pushes nothing: the current listing is an upper bound of the price, and when it surfaces
in a read the campaign is re-listed at its true price, which sorts after the entry being
popped, so the merged order stays exact. Half of a random price stream then costs one dict
lookup and two attribute writes.

``seq`` is a global counter taken at each price change, so equal bids rank by time
priority: the bid that has stood longest at that price wins.

RTB campaigns have no standing price; they sit in a per-vertical set and are asked live.

**Attestation bid modifiers.** Each (vertical, state) has one bucket per class of bid multipliers
(``routing/attestation.py``), up to ``MAX_CLASSES``: a call of attestation level L reads a class's
heap at ``bid * m[L]`` rounded down, bounded by its top (see ``ranked``). Campaigns without
modifiers are in the plain bucket, and so are those of classes past the first ``MAX_CLASSES``
(each then re-ranked alone when it surfaces); a call with no class to adjust runs the plain merge.

**Parked campaigns.** A campaign that cannot take any call for a known period (its buyer
cannot cover the bid, its schedule is closed, a cap, budget or its concurrency is spent) is
found once by a decision and parked: out of the heaps, into the ``ParkingLot``
(``routing/parking.py``), which brings it back on the event that re-enables it.

**Out of the index, counted.** Each bucket counts the campaigns it holds that are out of the
index (parked, or ``paused``) by reason (``routing/outside.py``); ``Book.offs`` reads them for
the auction replay, keeping its answer per (vertical, state, direction) until any count changes,
so the calls of a steady book share one answer.

**Saved off the hot path.** Each change is marked in ``dirty_specs`` (a campaign created or
replaced) or ``dirty_prices`` (repriced, paused, resumed): one set insert of its slot. The book
store (``exchange/bookstore.py``) takes them now and then and saves them, so a restart finds the
book as it stood (``take_dirty``).

**Away.** A campaign with ``cancel_on_disconnect`` is held out of the index, like a pause, while
its buyer has no open socket (``set_away``); its own ``paused`` is kept apart and saved.

**A ceiling per buyer.** ``max_per_buyer`` campaigns (``EXCHANGE_MAX_CAMPAIGNS_PER_BUYER``); a
new one past it is refused with ``campaign_limit`` and nothing in the book changes.
"""

from __future__ import annotations

from heapq import heapify, heappush
from collections.abc import Callable

from .attestation import UNATTESTED, Multipliers
from .capacity import Capacity
from .merge import Place, ranked as merged
from .outside import Listed, Outside, tally as outside_tally
from .parking import ParkingLot
from .schedule import ScheduleError
from .standing import US_STATES, CampaignError, CampaignSpec, Key, Standing


MAX_PER_BUYER = 2_000
_NO_COUNTS: dict[str, int] = {}  # shared, never written
MAX_CLASSES = 4  # classes of bid multipliers with a bucket of their own, per place (each adds a heap to a call's merge)

class Bucket:
    __slots__ = ("heap", "members", "buyers", "limit", "slots", "out", "mult")

    def __init__(self, slots: list[Standing], mult: Multipliers | None = None) -> None:
        self.slots = slots  # the book's: slot -> campaign
        self.mult = mult  # the attestation bid multipliers all its campaigns share (None: none)
        self.heap: list[tuple[int, int, int]] = []
        self.members: dict[Key, Standing] = {}  # the listed campaigns
        self.buyers: dict[str, int] = {}  # buyer -> how many of its campaigns are listed here
        self.limit = 64
        self.out = Outside()  # its campaigns out of the index (parked or paused), counted by reason

    def add(self, s: Standing) -> None:
        if s.key not in self.members:
            self.members[s.key] = s
            self.buyers[s.buyer] = self.buyers.get(s.buyer, 0) + 1

    def remove(self, s: Standing) -> None:
        if self.members.pop(s.key, None) is not None:
            n = self.buyers[s.buyer] - 1
            if n:
                self.buyers[s.buyer] = n
            else:
                del self.buyers[s.buyer]

    def push(self, entry: tuple[int, int, int]) -> None:
        heap = self.heap
        heappush(heap, entry)
        if len(heap) > self.limit:
            self.compact()

    def compact(self) -> None:
        """Drop stale entries (reusing the live ones) and re-heapify: amortised O(1) per push."""
        slots = self.slots
        heap = self.heap  # in place: the reads keep this list (``routing.merge.Place``), across reads and re-listings
        heap[:] = [e for e in heap if slots[e[2]].listing == e[1]]
        heapify(heap)
        self.limit = len(heap) + len(heap) // 2 + 32

class Book:
    __slots__ = ("_of", "_buckets", "_classes", "_rtb", "_seq", "max_per_buyer", "lot", "scanned", "popped", "relisted",
                 "_slots", "off_total", "_off_version", "_off_seen", "dirty_specs", "dirty_prices", "_cod",
                 "places", "_places_version", "indexed")

    def __init__(self, max_per_buyer: int = MAX_PER_BUYER) -> None:
        # buyer -> campaign id -> its campaign. Two levels, not one dict keyed by (buyer, id): a bid's
        # lookup then compares no stored key tuple, whose objects lie all over a large heap (at 100,000
        # campaigns 0.45 against 0.84-1.36 µs a lookup, cache misses). A campaign is never removed
        # (a replaced one's successor takes its place and its slot), so ``_slots`` lists them all.
        self._of: dict[str, dict[str, Standing]] = {}
        # (vertical, state or None: wide, accepts outbound) -> its buckets, one per class of bid multipliers
        self._buckets: dict[tuple[str, str | None, bool], list[Bucket]] = {}
        self._classes: dict[tuple[str, str | None, bool, Multipliers | None], Bucket] = {}
        # what a read of (vertical, state, outbound) walks: its buckets, built once per change of the
        # buckets (``routing.merge``); the version moves when a bucket is made (none is ever dropped)
        self.places: dict[tuple[str, str | None, bool], Place] = {}
        self._places_version = 0
        self._rtb: dict[str, dict[Key, Standing]] = {}
        self._seq = 0
        self.max_per_buyer = max_per_buyer
        self.lot = ParkingLot(self._unparked)
        self._slots: list[Standing] = []  # slot -> campaign (a replaced campaign's successor takes its slot)
        # what decisions cost the index, ever (host-independent figures for the benches and /metrics):
        self.scanned = 0  # live listings examined
        self.popped = 0  # heap entries popped (live, stale and moved down)
        self.relisted = 0  # campaigns re-listed because their price moved down since listing
        self.off_total = 0  # campaigns counted out of the index (parked or paused), all buckets
        self._off_version = 0  # bumped at each change of those counts
        self._off_seen: dict[tuple[str, str | None, bool], tuple[int, dict[str, int], Listed | None]] = {}
        self.dirty_specs: set[int] = set()  # slots created or replaced since the last save
        self.dirty_prices: set[int] = set()  # slots repriced, paused or resumed since the last save
        self._cod: dict[str, set[str]] = {}  # buyer -> its campaigns with cancel_on_disconnect
        # False on a node that decides no call (an edge of a market): its campaigns are kept, saved and
        # relayed but never listed in the heaps, so a bid there is a lookup and a mark, no heap push
        self.indexed = True

    def __len__(self) -> int:
        return len(self._slots)

    def next_seq(self) -> int:
        """The time-priority sequence: also stamps live (RTB) answers as they arrive."""
        self._seq += 1
        return self._seq

    def standing(self) -> list[Standing]:
        """Every campaign in the book (a copy of the list: for start-up passes, not the hot path)."""
        return list(self._slots)

    def get(self, buyer: str, campaign_id: str) -> Standing | None:
        of = self._of.get(buyer)
        return of.get(campaign_id) if of is not None else None

    # ------------------------------------------------------------------ writes
    def upsert(self, buyer: str, msg: CampaignSpec, away: bool = False) -> Standing:
        """Create or replace a campaign. Raises ``CampaignError`` (nothing changes).
        ``away``: its buyer has no open socket (a campaign restored at start)."""
        bad = sorted(set(msg.states) - US_STATES)
        if bad:
            raise CampaignError("invalid_field", f"unknown state {bad[0]}", f"$.states[{msg.states.index(bad[0])}]")
        old = self.get(buyer, msg.id)
        if old is None and len(self._of.get(buyer, ())) >= self.max_per_buyer:
            raise CampaignError("campaign_limit", f"a buyer holds at most {self.max_per_buyer} campaigns "
                                "(EXCHANGE_MAX_CAMPAIGNS_PER_BUYER); replace or pause one of yours", "$.id")
        try:
            s = Standing(buyer, msg, old.capacity if old is not None else Capacity())
        except ScheduleError as exc:
            raise CampaignError("invalid_field", str(exc), exc.path) from None
        if old is not None:
            self._unlist(old)
            s.slot = old.slot
            self._slots[s.slot] = s
        else:
            s.slot = len(self._slots)
            self._slots.append(s)
        self._of.setdefault(buyer, {})[msg.id] = s
        self.dirty_specs.add(s.slot)
        cod = self._cod.get(buyer)
        if s.cancel_on_disconnect:
            s.away = away
            if cod is None:
                cod = self._cod[buyer] = set()
            cod.add(s.id)
        elif cod is not None:
            cod.discard(s.id)
        if s.rtb:
            self._rtb.setdefault(s.vertical, {})[s.key] = s
        else:
            ob = s.accepts_outbound
            keys = [(s.vertical, None, ob)] if s.wide_states is not None or not s.states else [(s.vertical, st, ob) for st in s.states]
            s.buckets = [self._bucket(k, s.multipliers) for k in keys]
            if not s.held:
                self._list(s)
            else:
                self._set_off(s, "paused")
        return s

    def _bucket(self, key: tuple[str, str | None, bool], mult: Multipliers | None) -> Bucket:
        """The bucket of ``key`` for campaigns with multipliers ``mult``: the first ``MAX_CLASSES``
        classes at a place get their own; later ones share the plain bucket (read one by one)."""
        b = self._classes.get((*key, mult))
        if b is None:
            place = self._buckets.setdefault(key, [])
            if mult is not None and sum(x.mult is not None for x in place) >= MAX_CLASSES:
                return self._bucket(key, None)
            b = self._classes[(*key, mult)] = Bucket(self._slots, mult)
            place.append(b)
            self._places_version += 1
        return b

    def reprice(self, buyer: str, campaign_id: str, bid_cents: int) -> bool:
        """The hot write: O(1) if the price is unchanged, else one heap push per bucket."""
        of = self._of.get(buyer)
        s = of.get(campaign_id) if of is not None else None
        if s is None:
            return False
        if s.bid_cents != bid_cents:
            old, s.bid_cents = s.bid_cents, bid_cents
            self.dirty_prices.add(s.slot)
            self._seq += 1
            s.seq = seq = self._seq
            if bid_cents > s.listed_bid and s.listing >= 0:
                s.listing, s.listed_bid = seq, bid_cents
                entry = (-bid_cents, seq, s.slot)
                for b in s.buckets:
                    heap = b.heap
                    heappush(heap, entry)
                    if len(heap) > b.limit:
                        b.compact()
            elif s.parked is not None:
                self.lot.repriced(s, old)
        return True

    # ------------------------------------------------------------------ parked campaigns
    @property
    def parked(self) -> int:
        return self.lot.count

    def park(self, s: Standing, why: str, wake_ns: int | None, now_ns: int) -> None:
        """Take ``s`` out of the index until the event that re-enables it (``ParkingLot``)."""
        if s.listing < 0 or s.parked is not None:
            return
        self._delist(s)
        self.lot.park(s, why, wake_ns, now_ns)
        self._set_off(s, why)

    def _set_off(self, s: Standing, why: str | None) -> None:
        old = s.off
        if old == why:
            return
        s.off = why
        self.off_total += (why is not None) - (old is not None)
        self._off_version += 1
        for b in s.buckets:
            if old is not None:
                b.out.count(s, old, -1)
            if why is not None:
                b.out.count(s, why, 1)

    def _unparked(self, s: Standing) -> None:
        self._set_off(s, None)
        self._relist(s)
        for b in s.buckets:
            b.add(s)

    def set_paused(self, buyer: str, campaign_id: str, paused: bool) -> bool:
        s = self.get(buyer, campaign_id)
        if s is None:
            return False
        if s.paused != paused:
            was = s.held
            s.paused = paused
            self.dirty_prices.add(s.slot)
            self._hold(s, was)
        return True

    def set_away(self, buyer: str, away: bool) -> int:
        """Hold out (``away``) or bring back the buyer's ``cancel_on_disconnect`` campaigns:
        its first socket opened, or its last one closed. Returns how many changed."""
        n = 0
        for cid in self._cod.get(buyer, ()):
            s = self._of[buyer][cid]
            if s.away != away:
                was = s.held
                s.away = away
                self._hold(s, was)
                n += 1
        return n

    def _hold(self, s: Standing, was: bool) -> None:
        """Out of the index or back into it, when ``held`` moved from ``was``."""
        if s.held == was or s.rtb:
            return
        if s.held:
            self._delist(s)
            self._set_off(s, "paused")  # counted out of the index for the replay (a pause, or away)
        else:
            self._list(s)

    def take_dirty(self) -> tuple[list[Standing], list[Standing]]:
        """(created or replaced, repriced or paused only) since the last call; both cleared."""
        slots = self._slots
        specs = [slots[i] for i in self.dirty_specs]
        prices = [slots[i] for i in self.dirty_prices if i not in self.dirty_specs]
        self.dirty_specs, self.dirty_prices = set(), set()
        return specs, prices

    def _list(self, s: Standing) -> None:
        self.lot.forget(s)  # resumed while parked: listed now, and parked again by a decision if still refused
        self._set_off(s, None)
        self._seq += 1
        if not self.indexed:
            s.seq = self._seq
            return
        s.seq = s.listing = self._seq
        s.listed_bid = s.bid_cents
        entry = (-s.bid_cents, s.seq, s.slot)
        for b in s.buckets:
            b.add(s)
            b.push(entry)

    def _relist(self, s: Standing) -> None:
        """List at the true price (after decreases), keeping its time priority."""
        s.listing, s.listed_bid = s.seq, s.bid_cents
        entry = (-s.bid_cents, s.seq, s.slot)
        for b in s.buckets:
            b.push(entry)

    def _delist(self, s: Standing) -> None:
        s.listing = -1  # every heap entry of s is now stale
        s.listed_bid = 0
        for b in s.buckets:
            b.remove(s)

    def _unlist(self, s: Standing) -> None:
        s.live = False
        self.lot.forget(s)
        self._delist(s)
        self._set_off(s, None)
        if s.rtb:
            self._rtb.get(s.vertical, {}).pop(s.key, None)

    # ------------------------------------------------------------------ reads
    def ranked(
        self, vertical: str, state: str | None, now_ns: int, accept: Callable[[Standing], bool], want: int, scan_limit: int = 10_000,
        outbound: bool = False, done: set[str] | None = None, skipped: Callable[[Standing, str], None] | None = None,
        level: int = UNATTESTED,
    ) -> list[Standing]:
        """Up to ``want`` accepted standing bids in price-time order, best first (``routing.merge``)."""
        return merged(self, vertical, state, now_ns, accept, want, scan_limit, outbound, done, skipped, level)

    def offs(self, vertical: str, state: str | None, outbound: bool, list_at_most: int) -> tuple[dict[str, int], Listed | None]:
        """The campaigns of the buckets a call of (vertical, state, direction) reads that are out
        of the index (parked or paused), by reason; and, when they are at most ``list_at_most``
        in those buckets, each one (buyer, campaign, bid, reason), else None. A few dict reads."""
        if not self.off_total:
            return _NO_COUNTS, ()
        seen = self._off_seen.get((vertical, state, outbound))
        if seen is not None and seen[0] == self._off_version:  # nothing parked or back since: the same answer, shared
            return seen[1], seen[2]
        pool = []
        for ob in (True,) if outbound else (False, True):
            for key in ((vertical, state, ob), (vertical, None, ob)) if state is not None else ((vertical, None, ob),):
                for b in self._buckets.get(key, ()):
                    if b.out.members:
                        pool.append(b.out)
        counts, listed = outside_tally(pool, state, list_at_most) if pool else (_NO_COUNTS, ())
        if len(self._off_seen) > 4096:
            self._off_seen.clear()
        self._off_seen[(vertical, state, outbound)] = (self._off_version, counts, listed)
        return counts, listed

    @property
    def stats(self) -> dict[str, int]:
        return {"popped": self.popped, "scanned": self.scanned, "relisted": self.relisted}

    def rtb_candidates(self, vertical: str, state: str | None, now_ns: int) -> list[Standing]:
        pool = self._rtb.get(vertical)
        if not pool:
            return []
        return [s for s in pool.values() if not s.held and s.covers(state) and not s.expired(now_ns)]
