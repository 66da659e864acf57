"""The data the gate reads, in one container whose parts are swapped whole.

Every list is an immutable value (a ``DncArray`` with its provenance, a frozen mapping) or
a small store that only grows (suppressions, consents, call history). Reloading a list
builds the new value off to the side and assigns it in one statement, so a decision sees
either the old list or the new one, never a mix. ``generation`` changes on every swap; the
gate uses it to rebuild the evidence it stamps on decisions.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .consent import ConsentStore
from .dncarray import EMPTY, DncArray, from_keys
from .frequency import FrequencyCounter, Inquiries
from .rules import Holidays
from .suppression import SuppressionList


class NumberList(NamedTuple):
    """A DNC-style list and where it came from."""

    array: DncArray
    snapshot_day: int | None  # proleptic ordinal of the snapshot (download) date
    version: str  # e.g. "national:2026-04-10:n=253012345:crc=1a2b3c4d"

    def has(self, e164: str) -> bool:
        return self.array.has(e164)

    def has_key(self, key: int) -> bool:
        """``key``: the 10-digit national number as an int (see ``DncArray``)."""
        return self.array.contains(key)


class StateLists(NamedTuple):
    """State DNC lists, plus their union so a miss costs one lookup."""

    by_state: dict[str, NumberList]
    union: DncArray

    def hit(self, key: int) -> str | None:
        """The first state (alphabetically) whose list holds the national number ``key``."""
        if not self.union.contains(key):
            return None
        for st in sorted(self.by_state):
            if self.by_state[st].has_key(key):
                return st
        return None

    @classmethod
    def of(cls, by_state: dict[str, NumberList]) -> StateLists:
        if not by_state:
            return cls({}, EMPTY)
        if len(by_state) == 1:
            return cls(dict(by_state), next(iter(by_state.values())).array)
        keys = np.concatenate([nl.array.numbers() for nl in by_state.values()])
        return cls(dict(by_state), from_keys(keys, {"union": sorted(by_state)}))


class Rnd(NamedTuple):
    """Reassigned Numbers Database answers cached at lead intake: e164 -> disconnect day."""

    version: str
    disconnected: dict[str, int]


class Flags(NamedTuple):
    """Operator switches: declared state emergencies and tripped abandonment breakers."""

    version: str = "flags-0"
    emergency_states: frozenset[str] = frozenset()
    abandon_campaigns: frozenset[str] = frozenset()


class Stores:
    __slots__ = ("national", "state_lists", "litigators", "suppressions", "consents", "rnd", "frequency",
                 "inquiries", "holidays", "flags", "generation")

    def __init__(self, suppressions: SuppressionList | None = None) -> None:
        self.national: NumberList | None = None  # no snapshot: every outbound call is denied
        self.state_lists = StateLists({}, EMPTY)
        self.litigators = NumberList(EMPTY, None, "litigators-none")
        self.suppressions = suppressions if suppressions is not None else SuppressionList()
        self.consents = ConsentStore()
        self.rnd = Rnd("rnd-none", {})
        self.frequency = FrequencyCounter()
        self.inquiries = Inquiries()
        self.holidays: Holidays | None = None  # None: the rule data's calendars
        self.flags = Flags()
        self.generation = 0

    def swap(self, **parts: object) -> None:
        """Replace whole parts (national=..., state_lists=..., ...) and bump the generation."""
        for name, value in parts.items():
            if name not in self.__slots__ or name == "generation":
                raise AttributeError(name)
            setattr(self, name, value)
        self.generation += 1

    def set_state_list(self, state: str, nl: NumberList | None) -> None:
        by_state = dict(self.state_lists.by_state)
        if nl is None:
            by_state.pop(state, None)
        else:
            by_state[state] = nl
        self.swap(state_lists=StateLists.of(by_state))
