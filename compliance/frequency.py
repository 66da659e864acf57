"""Call history the gate counts: outbound attempts (frequency caps) and inquiries (EBR).

``FrequencyCounter`` is the in-process check-and-record of COMPLIANCE.md §2: outbound
solicitation attempts per (vertical, consumer number), across every buyer and publisher.
A check and its record happen in one synchronous call, so they are atomic within the process;
``compliance.redis_frequency`` is the shared variant (a Lua script) for several processes.

Window: an attempt at ``s`` counts against a call at ``t`` when ``s >= t - window``. Attempts
stamped at or after ``t`` also count: in a sequential history there are none, and under
concurrency (equal or skewed clocks) they are exactly the calls that must not slip through.

``Inquiries`` remembers consumer-initiated calls to a buyer: an inquiry starts the 90-day
established business relationship that lets that buyer call back manually (§1.3).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import NamedTuple, TypeVar

K = TypeVar("K")


class FrequencyPending(NamedTuple):
    """A cap the shared counter still has to check (and record) for an allowed call."""

    key: str  # "<vertical>:<e164>"
    cap: int
    rule: str  # the state whose cap applies
    window_ns: int


class FrequencyCounter:
    __slots__ = ("_times", "version")

    def __init__(self) -> None:
        self._times: dict[str, list[int]] = {}
        self.version = 0

    @staticmethod
    def key(vertical: str, e164: str) -> str:
        return f"{vertical}:{e164}"

    def counted(self, key: str, at_ns: int, window_ns: int) -> list[int]:
        """The attempts that count against a call at ``at_ns``, oldest first."""
        times = self._times.get(key)
        if not times:
            return []
        return times[bisect_left(times, at_ns - window_ns):]

    def record(self, key: str, at_ns: int) -> None:
        insort(self._times.setdefault(key, []), at_ns)
        self.version += 1

    def check_and_record(self, key: str, at_ns: int, cap: int, window_ns: int) -> int | None:
        """Record and return None when fewer than ``cap`` attempts count; else the instant
        from which one more attempt would be allowed (nothing is recorded)."""
        counted = self.counted(key, at_ns, window_ns)
        if len(counted) >= cap:
            return counted[len(counted) - cap] + window_ns + 1
        self.record(key, at_ns)
        return None

    def sweep(self, now_ns: int, keep_ns: int) -> int:
        """Forget attempts older than ``now - keep``; returns how many keys were dropped."""
        dead = []
        for key, times in self._times.items():
            cut = bisect_left(times, now_ns - keep_ns)
            if cut:
                del times[:cut]
            if not times:
                dead.append(key)
        for key in dead:
            del self._times[key]
        return len(dead)

    def __len__(self) -> int:
        return len(self._times)


class Inquiries:
    """(e164, buyer) -> sorted instants of consumer-initiated calls to that buyer; and per number
    the instants of all of them, whoever the buyer (``any_since``: is this callback anyone's EBR?)."""

    __slots__ = ("_times", "_numbers")

    def __init__(self) -> None:
        self._times: dict[tuple[str, str], list[int]] = {}
        self._numbers: dict[str, list[int]] = {}

    def record(self, e164: str, buyer: str, at_ns: int) -> None:
        insort(self._times.setdefault((e164, buyer), []), at_ns)
        insort(self._numbers.setdefault(e164, []), at_ns)

    def latest(self, e164: str, buyer: str, since_ns: int, at_ns: int) -> int | None:
        """The latest inquiry in ``[since, at]``, or None."""
        return _latest(self._times.get((e164, buyer)), since_ns, at_ns)

    def any_since(self, e164: str, since_ns: int, at_ns: int) -> bool:
        """Whether the consumer made an inquiry to any buyer in ``[since, at]``."""
        return _latest(self._numbers.get(e164), since_ns, at_ns) is not None

    def sweep(self, now_ns: int, keep_ns: int) -> None:
        _forget(self._times, now_ns - keep_ns)
        _forget(self._numbers, now_ns - keep_ns)


def _forget(index: dict[K, list[int]], before_ns: int) -> None:
    """Drop the instants before ``before_ns``, and the keys left with none."""
    for key in [k for k, t in index.items() if t[0] < before_ns]:
        times = index[key]
        del times[:bisect_left(times, before_ns)]
        if not times:
            del index[key]


def _latest(times: list[int] | None, since_ns: int, at_ns: int) -> int | None:
    if not times:
        return None
    i = bisect_left(times, at_ns + 1)
    if i and times[i - 1] >= since_ns:
        return times[i - 1]
    return None
