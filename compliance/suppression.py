"""The internal suppression list (company-specific DNC): permanent opt-outs.

Scope ``exchange`` blocks every buyer; scope ``buyer`` blocks one buyer. An entry applies
from its ``added_ns`` on. There is no removal: an opt-out is permanent.

``listener`` (optional) is told of every new entry: the runtime journals opt-outs with it so
they survive a restart and reach the other exchange processes. The list itself does no I/O.
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
    __slots__ = ("_by_number", "version", "listener")

    def __init__(self) -> None:
        self._by_number: dict[str, list[Suppressed]] = {}
        self.version = 0
        self.listener: Callable[[Suppressed], None] | None = None

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

    def hit(self, number: str, buyer: str | None, at_ns: int) -> Suppressed | None:
        """The entry that blocks ``number`` for ``buyer`` (or exchange-wide) at ``at_ns``."""
        entries = self._by_number.get(number)
        if not entries:
            return None
        own = f"buyer:{buyer}" if buyer is not None else None
        for e in entries:
            if e.added_ns <= at_ns and (e.scope == EXCHANGE_SCOPE or e.scope == own):
                return e
        return None

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_number.values())
