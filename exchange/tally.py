"""The report aggregate: hourly counters kept as calls happen, read by ``GET /v1/reports``.

Each call adds to one *call cell* of its hour, keyed ``(publisher, buyer, campaign, vertical,
state, reason)`` (buyer and campaign: the decision's winner, ``""`` when rejected), and to one
*bid cell* per campaign considered or asked to bid, keyed ``(buyer, campaign, publisher,
vertical, state, outcome)`` (outcome: ``won``, ``fallback``, ``outbid``, ``below_floor``,
``timeout``). Events add to the cells of their call: a completion's duration and money, a
fallback that rang a win. Each update is a dict lookup and a few integer additions: the
decision path pays O(1) per call plus one per bidder.

A report merges, hour by hour, the cells its caller may see, grouped by one field. A closed
hour's grouping is cached (cleared when a late event touches that hour), and so is a closed
UTC day's merge of its 24 hours (cleared with any of them), so a month costs about 30 day
merges plus the hours of the days it cuts, never a pass over the calls (bench/reports.py: a
month at 200 calls/s). Reports count whole hours.
The aggregate is rebuilt at start from the audit trail's decisions and events of the last
``EXCHANGE_REPORT_DAYS`` (see ``replay_audit``).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from operator import add
from typing import Any
from collections.abc import Iterable, Iterator

HOUR_NS = 3600 * 1_000_000_000
SLICE_CELLS = 5_000  # cells grouped between two yields to the event loop (a few ms)
SEAL_EVERY_S = 60  # the background pass of Tally.seal (exchange/service.py)

# counter slots of a cell
CALLS, ROUTED, REJECTED, WINS, BILLABLE, REVENUE, PAYOUT, MARGIN, COMPLETED, DURATION, RTB = range(11)
WIDTH = 11
# a bid cell also counts its live answers by how fast they came (ms, each bucket up to its bound; one more past the last)
MS_BUCKETS = (1, 2, 3, 5, 7, 10, 15, 20, 30, 40, 50, 60, 80, 100, 150, 200, 300, 500, 1000)
BID_WIDTH = WIDTH + len(MS_BUCKETS) + 1

GROUPS = ("buyer", "publisher", "campaign", "vertical", "state", "hour", "reason")
# where each group's value sits in a cell key: call cells (publisher, buyer, campaign, vertical, state, reason),
# bid cells (buyer, campaign, publisher, vertical, state, outcome)
_CALL_AT = {"publisher": 0, "buyer": 1, "campaign": 2, "vertical": 3, "state": 4, "reason": 5}
_BID_AT = {"buyer": 0, "campaign": 1, "publisher": 2, "vertical": 3, "state": 4, "reason": 5}

CallKey = tuple[str, str, str, str, str, str]


class Hour:
    __slots__ = ("calls", "bids", "cache", "own", "watched", "gen")

    def __init__(self) -> None:
        self.calls: dict[CallKey, list[int]] = {}
        self.bids: dict[CallKey, list[int]] = {}
        self.cache: dict[tuple[bool, int, str, str], dict[Any, list[int]]] = {}
        # (bid cell?, first field of the key: a call cell's publisher, a bid cell's buyer) -> its cells' keys:
        # a tenant's report reads its own cells, not the hour's
        self.own: dict[tuple[bool, str], list[CallKey]] = {}
        # a grouping a slice at a time (Tally._steps) watches the hour: an update meanwhile bumps gen
        self.watched = False
        self.gen = 0


def _cell(hour: Hour, bids: bool, key: CallKey, width: int = WIDTH) -> list[int]:
    table = hour.bids if bids else hour.calls
    c = table.get(key)
    if c is None:
        c = table[key] = [0] * width
        own = hour.own.get((bids, key[0]))
        if own is None:
            hour.own[(bids, key[0])] = [key]
        else:
            own.append(key)
    return c


def answer_p50_ms(c: list[int]) -> int | None:
    """The median answer time of a bid cell's live answers, as its bucket's bound (None: none)."""
    hist = c[WIDTH:]
    total = sum(hist)
    if not total:
        return None
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if 2 * seen >= total:
            return MS_BUCKETS[min(i, len(MS_BUCKETS) - 1)]
    return MS_BUCKETS[-1]


class Tally:
    """Hourly call and bid cells; see the module's docstring."""

    __slots__ = ("hours", "keep_hours", "days", "running")

    def __init__(self, keep_days: int = 35) -> None:
        self.hours: dict[int, Hour] = {}
        self.keep_hours = keep_days * 24
        self.days: dict[int, dict[tuple[bool, int, str, str], dict[Any, list[int]]]] = {}  # closed UTC day -> its merged groupings
        # running totals since start, per account: a publisher's [calls, routed], a buyer's [pings, wins]
        # (the dashboard's per-second rates, read without grouping the open hour)
        self.running: dict[str, list[int]] = {}

    def _hour(self, created_ns: int) -> Hour:
        h = created_ns // HOUR_NS
        hour = self.hours.get(h)
        if hour is None:
            hour = self.hours[h] = Hour()
        elif hour.cache or hour.watched:  # a late update of a closed hour: its groupings, and its day's, are stale
            hour.cache.clear()
            hour.gen += 1
            self.days.pop(h // 24, None)
        return hour

    # ------------------------------------------------------------------ updates
    def decided(self, created_ns: int, publisher: str, vertical: str, state: str | None, reason: str,
                routes: Iterable[tuple[str, str]], bids: Iterable[tuple[str, str, int]], floor_cents: int,
                asked: Iterable[tuple[str, str, str, int | None]] = ()) -> None:
        """One decision. ``routes``: (buyer, campaign) of the plan, winner first; ``bids``:
        (buyer, campaign, bid_cents) considered; ``asked``: live bid requests sent (buyer,
        campaign, its outcome when its answer was not considered: ``timeout``, ``no_bid`` or
        ``ineligible``; ms to its answer, None without one)."""
        hour = self._hour(created_ns)
        st = state or ""
        plan = list(routes)
        routed = reason == "ok"
        win_b, win_c = plan[0] if routed and plan else ("", "")
        c = _cell(hour, False, (publisher, win_b, win_c, vertical, st, reason))
        running = self.running
        r = running.get(publisher)
        if r is None:
            r = running[publisher] = [0, 0]
        r[0] += 1
        r[1] += routed
        c[CALLS] += 1
        c[ROUTED if routed else REJECTED] += 1
        if routed:
            c[WINS] += 1
        place = {bc: k for k, bc in enumerate(plan)} if routed else {}
        outcomes: dict[tuple[str, str], str] = {}
        table, state_col = hour.bids, ROUTED if routed else REJECTED
        for buyer, campaign, bid_cents in bids:  # (Tally._bid and _cell inlined: this runs for every bid of every decision)
            bc = (buyer, campaign)
            if bc in outcomes:
                continue
            k = place.get(bc)
            outcome = "won" if k == 0 else "fallback" if k is not None else "below_floor" if bid_cents < floor_cents else "outbid"
            outcomes[bc] = outcome
            key = (buyer, campaign, publisher, vertical, st, outcome)
            cell = table.get(key)
            if cell is None:
                cell = _cell(hour, True, key, BID_WIDTH)
            cell[CALLS] += 1
            cell[state_col] += 1
            r = running.get(buyer)
            if r is None:
                r = running[buyer] = [0, 0]
            r[0] += 1
            if k == 0:
                cell[WINS] += 1
                r[1] += 1
        for buyer, campaign, outcome, ms in asked:
            known = outcomes.get((buyer, campaign))
            if known is not None:  # answered and considered: counted above; add the request
                c = _cell(hour, True, (buyer, campaign, publisher, vertical, st, known), BID_WIDTH)
                c[RTB] += 1
            else:
                outcomes[(buyer, campaign)] = outcome
                c = self._bid(hour, buyer, campaign, publisher, vertical, st, outcome, routed, False, True)
                r = running.get(buyer)
                if r is None:
                    r = running[buyer] = [0, 0]
                r[0] += 1
            if ms is not None:
                c[WIDTH + bisect_left(MS_BUCKETS, ms)] += 1

    @staticmethod
    def _bid(hour: Hour, buyer: str, campaign: str, publisher: str, vertical: str, st: str, outcome: str,
             routed: bool, won: bool, asked: bool) -> list[int]:
        c = _cell(hour, True, (buyer, campaign, publisher, vertical, st, outcome), BID_WIDTH)
        c[CALLS] += 1
        c[ROUTED if routed else REJECTED] += 1
        if won:
            c[WINS] += 1
        if asked:
            c[RTB] += 1
        return c

    def rang(self, created_ns: int, publisher: str, vertical: str, state: str | None, buyer: str, campaign: str) -> None:
        """A fallback route rang (a ``failed`` leg moved the call to it): a win for its campaign."""
        hour = self._hour(created_ns)
        _cell(hour, True, (buyer, campaign, publisher, vertical, state or "", "fallback"), BID_WIDTH)[WINS] += 1
        r = self.running.get(buyer)
        if r is not None:
            r[1] += 1

    def completed(self, created_ns: int, publisher: str, vertical: str, state: str | None, first: tuple[str, str],
                  leg: tuple[str, str], leg_outcome: str, duration_s: int, billable: bool,
                  charged_cents: int, payout_cents: int, margin_cents: int) -> None:
        """A call completed on route ``leg`` (``first``: the decision's winner)."""
        hour = self._hour(created_ns)
        st = state or ""
        cells = (_cell(hour, False, (publisher, first[0], first[1], vertical, st, "ok")),
                 _cell(hour, True, (leg[0], leg[1], publisher, vertical, st, leg_outcome), BID_WIDTH))
        for c in cells:
            c[COMPLETED] += 1
            c[DURATION] += duration_s
            if billable:
                c[BILLABLE] += 1
                c[REVENUE] += charged_cents
                c[PAYOUT] += payout_cents
                c[MARGIN] += margin_cents

    def prune(self, now_ns: int) -> None:
        """Forget hours older than the kept window."""
        cutoff = now_ns // HOUR_NS - self.keep_hours
        for h in [h for h in self.hours if h < cutoff]:
            del self.hours[h]
        for d in [d for d in self.days if d * 24 < cutoff]:
            del self.days[d]

    # ------------------------------------------------------------------ reads
    def report(self, group_by: str, kind: str, owner: str | None, lo_ns: int, hi_ns: int, now_ns: int) -> list[tuple[Any, list[int]]]:
        """Rows ``(key, counters)`` for hours overlapping [lo_ns, hi_ns), sorted by key.
        ``kind``: operator | publisher | buyer (``owner`` its id). Buyer-side rows (a buyer's
        own report, or the operator's by buyer or campaign) count bid cells; the others call cells."""
        bids, gi, fi = _plan(group_by, kind)
        lo_h, hi_h, open_h = lo_ns // HOUR_NS, -(-hi_ns // HOUR_NS), now_ns // HOUR_NS
        ck = (bids, gi, owner or "", group_by)
        out: dict[Any, list[int]] = {}
        hours = sorted(h for h in self.hours if lo_h <= h < hi_h)
        i = 0
        while i < len(hours):
            h = hours[i]
            d = h // 24
            if d * 24 >= lo_h and (d + 1) * 24 <= min(hi_h, open_h):  # a whole closed day in range
                for key, c in self._day(d, ck, bids, gi, fi, owner, open_h).items():
                    _add(out, key, c)
                while i < len(hours) and hours[i] // 24 == d:
                    i += 1
                continue
            for key, c in self._grouped(h, ck, bids, gi, fi, owner, open_h).items():
                _add(out, key, c)
            i += 1
        return sorted(out.items(), key=lambda kv: (kv[0] is None, kv[0]))

    def warm(self, group_by: str, kind: str, owner: str | None, lo_ns: int, hi_ns: int, now_ns: int) -> Iterator[int]:
        """Group, one closed hour at a time, the hours of a coming ``report`` whose grouping is
        not cached yet, yielding the number of cells read after each, so an async caller can let
        other work run between hours (a month's first report reads every cell once)."""
        bids, gi, fi = _plan(group_by, kind)
        ck = (bids, gi, owner or "", group_by)
        open_h = now_ns // HOUR_NS
        for h in sorted(h for h in self.hours if lo_ns // HOUR_NS <= h < min(-(-hi_ns // HOUR_NS), open_h)):
            hour = self.hours.get(h)
            if hour is None or ck in hour.cache or ck in self.days.get(h // 24, {}):
                continue
            yield from self._steps(h, ck, bids, gi, fi, owner)

    def seal(self, now_ns: int) -> Iterator[int]:
        """Group every closed hour for each of the operator's groupings not cached yet, newest first,
        then merge each closed day whose merge is missing, yielding the cells (or rows) read after
        each step: run in the background (``reports_api.seal``) after the start's rebuild and as
        hours close, so an operator's first report over a month merges ~30 cached days instead of
        reading every cell of the month (a late event that reopens an hour is regrouped at the next pass)."""
        open_h = now_ns // HOUR_NS
        for h in sorted((h for h in self.hours if h < open_h), reverse=True):
            for g, bids, gi, fi in OPERATOR_PLANS:
                hour = self.hours.get(h)
                ck = (bids, gi, "", g)
                if hour is None or ck in hour.cache or ck in self.days.get(h // 24, {}):
                    continue
                yield from self._steps(h, ck, bids, gi, fi, None)
        for d in sorted({h // 24 for h in self.hours if (h // 24 + 1) * 24 <= open_h}, reverse=True):
            for g, bids, gi, fi in OPERATOR_PLANS:
                ck = (bids, gi, "", g)
                if ck not in self.days.get(d, {}):
                    yield 24 * len(self._day(d, ck, bids, gi, fi, None, open_h))

    def _steps(self, h: int, ck: tuple[bool, int, str, str], bids: bool, gi: int, fi: int, owner: str | None) -> Iterator[int]:
        """Group closed hour ``h`` for ``ck`` ``SLICE_CELLS`` cells at a time (yielding each slice's
        count) and cache it, unless an update touched the hour meanwhile (then the report, or the
        next pass, groups it again)."""
        hour = self.hours[h]
        table = hour.bids if bids else hour.calls
        keys = list(hour.own.get((bids, owner), ())) if fi == 0 and owner is not None else list(table)
        hour.watched = True
        gen = hour.gen
        out: dict[Any, list[int]] = {}
        at = h * HOUR_NS
        for i in range(0, len(keys), SLICE_CELLS):
            _sum_into(out, keys[i:i + SLICE_CELLS], table, gi, at)
            yield min(SLICE_CELLS, len(keys) - i)
            if hour.gen != gen or self.hours.get(h) is not hour:
                return
        hour.cache[ck] = out

    def _day(self, d: int, ck: tuple[bool, int, str, str], bids: bool, gi: int, fi: int, owner: str | None,
             open_h: int) -> dict[Any, list[int]]:
        """Closed UTC day ``d``'s 24 hours grouped for ``ck`` and merged (cached)."""
        merged = self.days.get(d, {}).get(ck)
        if merged is None:
            merged = {}
            for hh in range(d * 24, d * 24 + 24):
                if hh in self.hours:
                    for key, c in self._grouped(hh, ck, bids, gi, fi, owner, open_h).items():
                        _add(merged, key, c)
            self.days.setdefault(d, {})[ck] = merged
        return merged

    def _grouped(self, h: int, ck: tuple[bool, int, str, str], bids: bool, gi: int, fi: int, owner: str | None,
                 open_h: int) -> dict[Any, list[int]]:
        """Hour ``h``'s cells grouped for ``ck`` (cached once the hour has closed)."""
        hour = self.hours[h]
        grouped = hour.cache.get(ck)
        if grouped is None:
            grouped = _group(hour, bids, gi, fi, owner, h)
            if h < open_h:
                hour.cache[ck] = grouped
        return grouped


def _plan(group_by: str, kind: str) -> tuple[bool, int, int]:
    """(bid cells?, where the group's value sits in a key (-1: the hour), where the owner sits (-1: anyone))."""
    bids = kind == "buyer" or (kind == "operator" and group_by in ("buyer", "campaign"))
    at = _BID_AT if bids else _CALL_AT
    return bids, -1 if group_by == "hour" else at[group_by], -1 if kind == "operator" else at[kind]


OPERATOR_PLANS = tuple((g, *_plan(g, "operator")) for g in GROUPS)


def _group(hour: Hour, bids: bool, gi: int, fi: int, owner: str | None, h: int) -> dict[Any, list[int]]:
    """The hour's cells (``owner``'s only when ``fi`` names where it sits) grouped by field ``gi``."""
    table = hour.bids if bids else hour.calls
    out: dict[Any, list[int]] = {}
    if fi == 0 and owner is not None:  # a tenant: its own cells, from the hour's index
        _sum_into(out, hour.own.get((bids, owner), ()), table, gi, h * HOUR_NS)
    else:
        _sum_into(out, [key for key in table if fi < 0 or key[fi] == owner], table, gi, h * HOUR_NS)
    return out


def _sum_into(out: dict[Any, list[int]], keys: Iterable[CallKey], table: dict[CallKey, list[int]], gi: int, at: int) -> None:
    """Add the cells ``table[key]`` into ``out`` grouped by field ``gi`` of the key (``at``, the
    hour, when ``gi`` < 0): the cells of a group are summed column by column (``zip``), about
    twice as fast as adding them one at a time."""
    parts: dict[Any, list[list[int]]] = {}
    for key in keys:
        g = at if gi < 0 else (key[gi] or None)
        cells = parts.get(g)
        if cells is None:
            parts[g] = [table[key]]
        else:
            cells.append(table[key])
    for g, cells in parts.items():
        _add(out, g, cells[0] if len(cells) == 1 else list(map(sum, zip(*cells))))


async def sliced(work: Iterator[int]) -> None:
    """Run ``work`` (``Tally.warm`` or ``Tally.seal``: each step yields the cells it read), letting
    the event loop run other work every ``SLICE_CELLS`` cells, so a month's grouping never holds
    decisions up for its whole pass."""
    read = 0
    for n in work:
        read += n
        if read >= SLICE_CELLS:
            read = 0
            await asyncio.sleep(0)


def _add(out: dict[Any, list[int]], key: Any, counts: list[int]) -> None:
    """Add ``counts`` into ``out[key]`` (a copy the first time)."""
    acc = out.get(key)
    if acc is None:
        out[key] = list(counts)
    elif len(acc) == len(counts):
        out[key] = list(map(add, acc, counts))
    else:  # (cells of different widths: call and bid cells)
        for i in range(min(len(acc), len(counts))):
            acc[i] += counts[i]


__all__ = ["Tally", "GROUPS", "HOUR_NS", "WIDTH", "answer_p50_ms", "sliced"]
