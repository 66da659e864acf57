"""Repeat-caller windows: a caller already billed to a buyer is not billable to it again
within the campaign's ``dedupe_days``."""

from __future__ import annotations

NS_PER_DAY = 86_400 * 1_000_000_000
MAX_DEDUPE_DAYS = 365  # the longest window a campaign may set (``Campaign.dedupe_days``)


class DedupeIndex:
    """Last billable call per (buyer, caller). Pure; pruned by ``prune``."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], int] = {}

    def is_repeat(self, buyer: str, caller: str, days: int, now_ns: int) -> bool:
        if days <= 0:
            return False
        last = self._last.get((buyer, caller))
        return last is not None and now_ns - last < days * NS_PER_DAY

    def record(self, buyer: str, caller: str, now_ns: int) -> None:
        key = (buyer, caller)
        if self._last.get(key, now_ns) <= now_ns:  # (never moved back: a rebuild may replay older calls)
            self._last[key] = now_ns

    def forget_caller(self, caller: str) -> int:
        """Drop every entry of ``caller`` (the number was erased); how many."""
        gone = [k for k in self._last if k[1] == caller]
        for k in gone:
            del self._last[k]
        return len(gone)

    def prune(self, now_ns: int, max_days: int = MAX_DEDUPE_DAYS) -> int:
        """Forget entries older than ``max_days`` (no campaign may dedupe longer)."""
        cutoff = now_ns - max_days * NS_PER_DAY
        old = [k for k, t in self._last.items() if t < cutoff]
        for k in old:
            del self._last[k]
        return len(old)

    def __len__(self) -> int:
        return len(self._last)
