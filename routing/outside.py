"""Campaigns out of the book's index, counted per bucket: what the auction replay reads.

A campaign leaves the ranked index when it is parked (``routing/parking.py``: a reason that
holds for every call until an event or an instant) or paused; decisions never walk it then.
Each bucket keeps ``Outside``: the campaigns it holds that are out, and their count by reason
under each state filter -- ``None`` for campaigns of any state (and every campaign of a state's
own bucket), each of its states for a wide campaign with a state list -- so a decision reads,
in a few dict lookups, how many campaigns of its buckets were out and why (``tally``), and
lists them one by one only when they are few. Updating costs each park, unpark, pause and
resume one dict update per bucket (per state for a filtered wide campaign). Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .standing import Key, Standing

Listed = tuple[tuple[str, str, "int | None", str], ...]  # (buyer, campaign, bid_cents, reason)


class Outside:
    __slots__ = ("by_state", "members")

    def __init__(self) -> None:
        self.by_state: dict[str | None, dict[str, int]] = {}  # state filter (None: any state) -> reason -> campaigns out
        self.members: dict[Key, Standing] = {}  # the campaigns out

    def count(self, s: Standing, why: str, n: int) -> None:
        """Count ``s`` out of the index for ``why`` (n=1), or no longer (n=-1)."""
        by_state = self.by_state
        for k in (None,) if s.wide_states is None else s.wide_states:
            d = by_state.get(k)
            if d is None:
                d = by_state[k] = {}
            left = d.get(why, 0) + n
            if left > 0:
                d[why] = left
            else:
                d.pop(why, None)
                if not d:
                    del by_state[k]
        if n > 0:
            self.members[s.key] = s
        else:
            self.members.pop(s.key, None)


def tally(pool: Sequence[Outside], state: str | None, list_at_most: int) -> tuple[dict[str, int], Listed | None]:
    """The campaigns out of the index in ``pool`` (the buckets a call reads) that a call of
    ``state`` could have had, by reason; and each of them when they are at most ``list_at_most``
    in those buckets (else None)."""
    counts: dict[str, int] = {}
    total = 0
    for out in pool:
        total += len(out.members)
        for k in (None, state) if state is not None else (None,):
            d = out.by_state.get(k)
            if d:
                for why, n in d.items():
                    counts[why] = counts.get(why, 0) + n
    if total > list_at_most:
        return counts, None
    return counts, tuple((s.buyer, s.id, s.bid_cents, s.off) for out in pool for s in out.members.values()
                         if s.off is not None and (s.wide_states is None or state in s.wide_states))


__all__ = ["Outside", "tally", "Listed"]
