"""The book's read: a call's candidates in merged price-time order (``Book.ranked``).

Kept apart from ``routing/book.py`` (which owns the index and its writes) because it is the
one loop every decision runs; it reads the book's buckets and slots and re-lists what it finds
stale, exactly as a method would.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heapify, heappop, heappush, heapreplace
from typing import TYPE_CHECKING

from .attestation import NAMES, ONE, UNATTESTED
from .standing import Standing

if TYPE_CHECKING:
    from .book import Book, Bucket


def ranked(
    book: Book, vertical: str, state: str | None, now_ns: int, accept: Callable[[Standing], bool], want: int, scan_limit: int = 10_000,
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
    modifiers, even when most campaigns have them. A place of at most ``SCAN_HEAPS`` heaps and
    no modifier for this level (the common case) takes the plain merge: a scan of the heaps'
    tops at each step. The lists a read walks are kept per place (``Place``).
    """
    place = book.places.get((vertical, state, outbound))
    if place is None or place.version != book._places_version:
        place = _place(book, vertical, state, outbound)
    pool, heaps = place.pool, place.heaps
    mults, plain, ones, mods = place.by_level[level]  # plain: a few heaps, none modified (scan them)
    seen = (-1, -1)  # (buyers done, campaigns parked) when the stop was last checked
    out: list[Standing] = []
    slots = book._slots
    backs: list[tuple[int, tuple[int, int, int]]] = []  # (heap index, entry) of the live entries popped
    scanned = popped = 0
    adjusted: list[tuple[int, int, int]] = []  # (-price for this call, seq, slot) of campaigns with modifiers
    # Plain: the heap with the smallest top, found by a scan at each step. Otherwise (class buckets,
    # or a modified level): a heap of each heap's key -- its top, or its class's bound -- with its
    # index, as one flat tuple (price, seq, slot, index), kept up to date as entries are popped (and rebuilt when a
    # re-listing pushed into a heap), so each step costs O(log heaps) instead of a scan of every
    # class's heap; ties go to the lower index either way.
    tour = [] if plain else _keys(heaps, ones, mods)
    while len(out) < want and scanned < scan_limit:
        k = -1
        top: tuple[int, ...] | None = None
        if plain:
            for i, h in enumerate(heaps):
                if h and (top is None or h[0] < top):
                    k, top = i, h[0]
        elif tour:
            t = tour[0]  # (an adjusted entry never equals its first three: compared as the key alone)
            top, k = t, t[3]
        if adjusted and (top is None or adjusted[0] < top):
            s = slots[heappop(adjusted)[2]]  # its adjusted price sorts first now
        else:
            if k < 0:
                break
            h = heaps[k]
            entry = heappop(h)
            if not plain:
                if h:
                    m = mults[k]
                    heapreplace(tour, h[0] + (k,) if m == ONE else (-(-h[0][0] * m // ONE), -1, -1, k))
                else:
                    heappop(tour)
            popped += 1
            s = slots[entry[2]]
            if s.listing != entry[1]:
                continue  # an old listing, paused or replaced: drop the entry
            if s.seq != entry[1]:
                book._relist(s)  # the price moved down since listing: re-list at the true price
                book.relisted += 1
                if not plain:
                    tour = _keys(heaps, ones, mods)
                continue
            if s.expires_ns is not None and s.expires_ns <= now_ns:
                for bucket in s.buckets:  # expired for good: drop it from the index
                    bucket.remove(s)
                continue
            backs.append((k, entry))
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
        if done is not None and (len(done), book.lot.count) != seen:
            seen = (len(done), book.lot.count)  # (parking during the scan can take a buyer out of these heaps)
            n = seen[0]
            for b in pool:  # (n below some heap's count of buyers: not all done; usually the first heap says so)
                if len(b.buyers) > n:
                    break
            else:
                if n >= len(set().union(*(b.buyers for b in pool))):
                    break  # every buyer listed here has its route or its refusal
    book.scanned += scanned
    book.popped += popped
    for k, entry in backs:
        if slots[entry[2]].listing == entry[1]:  # (not parked meanwhile by ``accept``)
            heappush(heaps[k], entry)
    return out

SCAN_HEAPS = 4  # a call's place without class buckets: its state's and the wide ones, by direction


class Place:
    """What a read of one (vertical, state, outbound) walks: the buckets of the call's state and
    the wide ones (for an inbound call those that take outbound calls too), their heaps, and per
    attestation level each heap's multiplier. Built on the first read after the book made a
    bucket (none is ever dropped; a bucket's heap is the same list for its life, empty or not),
    so a decision does not rebuild these lists from the bucket index every time."""

    __slots__ = ("version", "pool", "heaps", "by_level")

    def __init__(self, version: int, pool: list[Bucket]) -> None:
        self.version = version
        self.pool = pool
        self.heaps = [b.heap for b in pool]
        self.by_level = [self._level(level) for level in range(len(NAMES))]  # indexed by attestation level

    def _level(self, level: int) -> tuple[list[int], bool, list[int], list[tuple[int, int]]]:
        """For a call of ``level``: each heap's multiplier, whether the scan of the plain merge
        reads them (all one, and at most ``SCAN_HEAPS``: past that the keys' heap is cheaper, as
        at an A call where the class buckets all rank at their listed prices), the heaps read at
        their listed prices and (index, multiplier) of the others."""
        mults = [ONE if b.mult is None else b.mult[level] for b in self.pool]
        ones = [i for i, m in enumerate(mults) if m == ONE]
        return mults, len(ones) == len(mults) <= SCAN_HEAPS, ones, [(i, m) for i, m in enumerate(mults) if m != ONE]


def _place(book: Book, vertical: str, state: str | None, outbound: bool) -> Place:
    buckets = book._buckets
    wheres = (state, None) if state is not None else (None,)
    pool = [b for ob in ((True,) if outbound else (False, True)) for where in wheres for b in buckets.get((vertical, where, ob), ())]
    places = book.places
    if len(places) > 4096:  # verticals are the buyers' words: bounded, rebuilt on demand
        places.clear()
    place = places[(vertical, state, outbound)] = Place(book._places_version, pool)
    return place


def _keys(heaps: list[list[tuple[int, int, int]]], ones: list[int], mods: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """A heap of (*key, index) of the non-empty heaps: a heap's key is its top, or with a multiplier
    ``m`` its class's bound, ``(-(listed * m rounded down), -1, -1)`` (before any entry of that price)."""
    out = [heaps[i][0] + (i,) for i in ones if heaps[i]]
    out += [(-(-h[0][0] * m // ONE), -1, -1, i) for i, m in mods if (h := heaps[i])]
    heapify(out)
    return out
