"""The internal suppression list (company-specific DNC): permanent opt-outs.

Scope ``exchange`` blocks every buyer; scope ``buyer`` blocks one buyer. An entry applies
from its ``added_ns`` on. There is no removal: an opt-out is permanent.

``listener`` (optional) is told of every new entry: the runtime journals opt-outs with it so
they survive a restart and reach the other exchange processes. The list itself does no I/O.

An opt-out whose number can no longer be read (the consumer was erased: only its blind index,
an HMAC of the number, is kept) is held by that index (``add_blind``, ``seal``); while any is,
a number not found in clear is looked up by its index too (``blinder``, one HMAC per number,
remembered for the next buyer of the same call).
"""

from __future__ import annotations

from typing import NamedTuple
from collections.abc import Callable

EXCHANGE_SCOPE = "exchange"


class Suppressed(NamedTuple):
    number: str
    scope: str  # "exchange" or "buyer:<id>"
    added_ns: int
    source: str = ""


class SuppressionList:
    __slots__ = ("_by_number", "_by_blind", "version", "listener", "blinder", "_memo")

    def __init__(self) -> None:
        self._by_number: dict[str, list[Suppressed]] = {}
        self._by_blind: dict[str, list[Suppressed]] = {}  # opt-outs of erased numbers, by blind index
        self.version = 0
        self.listener: Callable[[Suppressed], None] | None = None
        self.blinder: Callable[[str], str] | None = None  # number -> blind index (exchange.privacy)
        self._memo = ("", "")

    def add(self, number: str, scope: str, added_ns: int, source: str = "") -> bool:
        """Record an opt-out; False if the same (number, scope) was already on the list."""
        entries = self._by_number.setdefault(number, [])
        if any(e.scope == scope for e in entries):
            return False
        entry = Suppressed(number, scope, added_ns, source)
        entries.append(entry)
        self.version += 1
        if self.listener is not None:
            self.listener(entry)
        return True

    def add_blind(self, blind: str, scope: str, added_ns: int, source: str = "") -> bool:
        """An opt-out known by its number's blind index only (replayed after an erasure)."""
        entries = self._by_blind.setdefault(blind, [])
        if any(e.scope == scope for e in entries):
            return False
        entries.append(Suppressed(blind, scope, added_ns, source))
        self.version += 1
        return True

    def seal(self, number: str, blind: str) -> int:
        """The number was erased: keep its opt-outs by blind index only; how many moved."""
        moved = self._by_number.pop(number, [])
        for e in moved:
            self.add_blind(blind, e.scope, e.added_ns, e.source)
        return len(moved)

    def _blind_entries(self, number: str) -> list[Suppressed] | None:
        if self.blinder is None:
            return None
        memo = self._memo
        if memo[0] != number:
            memo = self._memo = (number, self.blinder(number))
        return self._by_blind.get(memo[1])

    def hit(self, number: str, buyer: str | None, at_ns: int) -> Suppressed | None:
        """The entry that blocks ``number`` for ``buyer`` (or exchange-wide) at ``at_ns``."""
        entries = self._by_number.get(number)
        if self._by_blind:
            sealed = self._blind_entries(number)
            if sealed:
                entries = [*(entries or ()), *sealed]
        if not entries:
            return None
        own = f"buyer:{buyer}" if buyer is not None else None
        for e in entries:
            if e.added_ns <= at_ns and (e.scope == EXCHANGE_SCOPE or e.scope == own):
                return e
        return None

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_number.values()) + sum(len(v) for v in self._by_blind.values())
