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

**A ceiling per buyer.** ``max_per_buyer`` campaigns (``EXCHANGE_MAX_CAMPAIGNS_PER_BUYER``); a
new one past it is refused with ``campaign_limit`` and nothing in the book changes.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush
from collections.abc import Callable

from .attestation import ONE, UNATTESTED, Multipliers
from .capacity import Capacity
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
        heap = [e for e in self.heap if slots[e[2]].listing == e[1]]
        heapify(heap)
        self.heap = heap
        self.limit = len(heap) + len(heap) // 2 + 32

class Book:
    __slots__ = ("_campaigns", "_buckets", "_classes", "_rtb", "_seq", "_per_buyer", "max_per_buyer", "lot", "scanned", "popped", "relisted",
                 "_slots", "off_total", "_off_version", "_off_seen")

    def __init__(self, max_per_buyer: int = MAX_PER_BUYER) -> None:
        self._campaigns: dict[Key, Standing] = {}
        # (vertical, state or None: wide, accepts outbound) -> its buckets, one per class of bid multipliers
        self._buckets: dict[tuple[str, str | None, bool], list[Bucket]] = {}
        self._classes: dict[tuple[str, str | None, bool, Multipliers | None], Bucket] = {}
        self._rtb: dict[str, dict[Key, Standing]] = {}
        self._seq = 0
        self._per_buyer: dict[str, int] = {}
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

    def __len__(self) -> int:
        return len(self._campaigns)

    def next_seq(self) -> int:
        """The time-priority sequence: also stamps live (RTB) answers as they arrive."""
        self._seq += 1
        return self._seq

    def get(self, buyer: str, campaign_id: str) -> Standing | None:
        return self._campaigns.get((buyer, campaign_id))

    # ------------------------------------------------------------------ writes
    def upsert(self, buyer: str, msg: CampaignSpec) -> Standing:
        """Create or replace a campaign. Raises ``CampaignError`` (nothing changes)."""
        bad = sorted(set(msg.states) - US_STATES)
        if bad:
            raise CampaignError("invalid_field", f"unknown state {bad[0]}", f"$.states[{msg.states.index(bad[0])}]")
        old = self._campaigns.get((buyer, msg.id))
        if old is None and self._per_buyer.get(buyer, 0) >= self.max_per_buyer:
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
            self._per_buyer[buyer] = self._per_buyer.get(buyer, 0) + 1
            s.slot = len(self._slots)
            self._slots.append(s)
        self._campaigns[s.key] = s
        if s.rtb:
            self._rtb.setdefault(s.vertical, {})[s.key] = s
        else:
            ob = s.accepts_outbound
            keys = [(s.vertical, None, ob)] if s.wide_states is not None or not s.states else [(s.vertical, st, ob) for st in s.states]
            s.buckets = [self._bucket(k, s.multipliers) for k in keys]
            if not s.paused:
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
        return b

    def reprice(self, buyer: str, campaign_id: str, bid_cents: int) -> bool:
        """The hot write: O(1) if the price is unchanged, else one heap push per bucket."""
        s = self._campaigns.get((buyer, campaign_id))
        if s is None:
            return False
        if s.bid_cents != bid_cents:
            old, s.bid_cents = s.bid_cents, bid_cents
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
        s = self._campaigns.get((buyer, campaign_id))
        if s is None:
            return False
        if s.paused != paused:
            s.paused = paused
            if paused:
                self._delist(s)
                if not s.rtb:
                    self._set_off(s, "paused")
            else:
                self._list(s)
        return True

    def _list(self, s: Standing) -> None:
        self.lot.forget(s)  # resumed while parked: listed now, and parked again by a decision if still refused
        self._set_off(s, None)
        self._seq += 1
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
        """Up to ``want`` accepted standing bids in price-time order, best first.

        Pops the candidate heaps in merged order -- the call's state and the wide campaigns,
        each split by whether the campaigns take outbound calls (an outbound call reads only
        those that do) -- drops stale and expired entries for good, and pushes every live
        entry it popped back, so the book is unchanged.

        ``done``: the buyers the caller needs no more campaigns of (one route per buyer, or a
        refusal that holds for all of a buyer's campaigns), filled by ``accept``. The scan stops
        once every buyer listed in these heaps is done, instead of walking the rest.

        ``skipped``: called with (campaign, ``"state"``) for each wide campaign walked whose state
        filter leaves the call's state out (the auction replay notes it).

        ``level``: the call's attestation level. A campaign with bid modifiers ranks at its bid
        for that level, ``bid * m`` rounded down (``routing.attestation``). Campaigns are held in
        one bucket per class of multipliers (the same ``m`` for every level), so a heap's top
        bounds the whole heap's modified prices: ``listed * m`` rounded down. The merge pops a
        class's heap only while that bound can beat the best modified price found so far (a
        per-call heap of the exact ones), so a call reads about as many entries as without
        modifiers, even when most campaigns have them; without modifiers (the common case) the
        loop is the plain merge.
        """
        buckets = self._buckets
        heaps = []
        pool: list[Bucket] = []
        mults: list[int] = []  # each heap's multiplier for this call's level
        plain = True  # no heap to read at a modified price: the plain merge
        for ob in (True,) if outbound else (False, True):
            for where in (state, None) if state is not None else (None,):
                for b in buckets.get((vertical, where, ob), ()):
                    if b.heap:
                        heaps.append(b.heap)
                        pool.append(b)
                        m = ONE if b.mult is None else b.mult[level]
                        mults.append(m)
                        plain = plain and m == ONE
        seen = (-1, -1)  # (buyers done, campaigns parked) when the stop was last checked
        out: list[Standing] = []
        slots = self._slots
        backs: list[list[tuple[int, int, int]]] = [[] for _ in heaps]
        scanned = popped = 0
        adjusted: list[tuple[int, int, int]] = []  # (-price for this call, seq, slot) of campaigns with modifiers
        while len(out) < want and scanned < scan_limit:
            k = -1
            top = None
            if plain:
                for i, h in enumerate(heaps):
                    if h and (top is None or h[0] < top):
                        k, top = i, h[0]
            else:  # a class's bound: no entry of its heap is modified above its top's listed price, modified
                for i, h in enumerate(heaps):
                    if h:
                        m = mults[i]
                        key = h[0] if m == ONE else (-(-h[0][0] * m // ONE), -1, -1)  # (-(listed * m rounded down), before any seq)
                        if top is None or key < top:
                            k, top = i, key
            if adjusted and (top is None or adjusted[0] < top):
                s = slots[heappop(adjusted)[2]]  # its adjusted price sorts first now
            else:
                if k < 0:
                    break
                entry = heappop(heaps[k])
                popped += 1
                s = slots[entry[2]]
                if s.listing != entry[1]:
                    continue  # an old listing, paused or replaced: drop the entry
                if s.seq != entry[1]:
                    self._relist(s)  # the price moved down since listing: re-list at the true price
                    self.relisted += 1
                    continue
                if s.expires_ns is not None and s.expires_ns <= now_ns:
                    for bucket in s.buckets:  # expired for good: drop it from the index
                        bucket.remove(s)
                    continue
                backs[k].append(entry)
                ms = s.multipliers  # its class's, or its own in the plain bucket (past MAX_CLASSES)
                if ms is not None and ms[level] != ONE:
                    heappush(adjusted, (-(s.bid_cents * ms[level] // ONE), s.seq, s.slot))
                    continue
            scanned += 1
            if s.wide_states is not None and state not in s.wide_states:
                if skipped is not None:
                    skipped(s, "state")
                continue
            if accept(s):
                out.append(s)
            if done is not None and (len(done), self.lot.count) != seen:
                seen = (len(done), self.lot.count)  # (parking during the scan can take a buyer out of these heaps)
                n = seen[0]
                if n >= max(len(b.buyers) for b in pool) and n >= len(set().union(*(b.buyers for b in pool))):
                    break  # every buyer listed here has its route or its refusal
        self.scanned += scanned
        self.popped += popped
        for h, back in zip(heaps, backs):
            for entry in back:
                if slots[entry[2]].listing == entry[1]:  # (not parked meanwhile by ``accept``)
                    heappush(h, entry)
        return out

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
        return [s for s in pool.values() if not s.paused and s.covers(state) and not s.expired(now_ns)]
