"""Who may list which calls: per-account logs of the calls in memory, for ``GET /v1/calls``.

Every decided call is appended to the market's log and its publisher's; a buyer's log gets
the call when one of its routes rings (the decision's winner, or a fallback after a
``failed``). A log is append-only (call ids and their decision times, in decision order) with
an absolute position per entry, so a page's cursor is a position: stable while newer calls
arrive. Calls forgotten after ``EXCHANGE_CALL_RETENTION_S`` are dropped from the logs' heads
by the sweeper and skipped where they sit elsewhere. A page reads at most ``SCAN`` entries
(filters may skip many); when it stops there it still returns a cursor to go on from.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping
from typing import Any

SCAN = 20_000  # entries looked at per page, at most


class Log:
    __slots__ = ("ids", "ns", "base")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.ns: list[int] = []
        self.base = 0  # absolute position of ids[0]

    def add(self, call_id: str, created_ns: int) -> None:
        self.ids.append(call_id)
        self.ns.append(created_ns)

    def prune(self, alive: Mapping[str, Any]) -> None:
        n = 0
        ids = self.ids
        while n < len(ids) and ids[n] not in alive:
            n += 1
        if n:
            del self.ids[:n]
            del self.ns[:n]
            self.base += n


class CallLog:
    __slots__ = ("market", "owners")

    def __init__(self) -> None:
        self.market = Log()
        self.owners: dict[str, Log] = {}

    def decided(self, call_id: str, publisher: str, created_ns: int) -> None:
        self.market.add(call_id, created_ns)
        self._log(publisher).add(call_id, created_ns)

    def rang(self, call_id: str, buyer: str, created_ns: int) -> None:
        self._log(buyer).add(call_id, created_ns)

    def _log(self, owner: str) -> Log:
        log = self.owners.get(owner)
        if log is None:
            log = self.owners[owner] = Log()
        return log

    def prune(self, alive: Mapping[str, Any]) -> None:
        self.market.prune(alive)
        for log in self.owners.values():  # kept when empty: its base keeps old cursors meaningful
            log.prune(alive)

    def page(self, owner: str | None, alive: Mapping[str, Any], lo_ns: int | None, hi_ns: int | None,
             keep: Callable[[Any], bool], limit: int, cursor: int | None) -> tuple[list[Any], int | None]:
        """Newest first: up to ``limit`` records of ``alive`` that ``keep`` accepts, decided in
        [lo_ns, hi_ns), before position ``cursor``; and the cursor of the next page (None: done)."""
        log = self.market if owner is None else self.owners.get(owner)
        if log is None:
            return [], None
        i = len(log.ids) if cursor is None else min(cursor - log.base, len(log.ids))
        if hi_ns is not None:
            i = min(i, bisect_left(log.ns, hi_ns))
        out: list[Any] = []
        scanned = 0
        while i > 0:
            if len(out) >= limit:
                return out, log.base + i
            if scanned >= SCAN:
                return out, log.base + i
            i -= 1
            scanned += 1
            if lo_ns is not None and log.ns[i] < lo_ns:
                return out, None
            rec = alive.get(log.ids[i])
            if rec is not None and keep(rec):
                out.append(rec)
        return out, None


__all__ = ["CallLog", "SCAN"]
