"""Clocks for the edges: wall time for timestamps, a manual clock for tests."""

from __future__ import annotations

import time


class WallClock:
    @staticmethod
    def now_ns() -> int:
        return time.time_ns()


class ManualClock:
    """A clock that moves only when told to: drives the core deterministically in tests."""

    def __init__(self, start_ns: int = 1_776_000_000 * 1_000_000_000) -> None:
        self.t = start_ns

    def now_ns(self) -> int:
        return self.t

    def advance(self, seconds: float) -> int:
        self.t += int(seconds * 1_000_000_000)
        return self.t
