"""Per-key rate limits: one token bucket per API key (or account), pure and O(1).

``take(key, now_s, cost)`` spends ``cost`` tokens and returns 0.0, or, when the bucket is
short, spends nothing and returns the seconds until ``cost`` tokens will be there (the
``Retry-After``); ``math.inf`` for a ``cost`` over ``burst``, which can never be taken. Buckets refill at ``rate`` per second up to ``burst``. ``strikes`` counts
refusals in a row per key so an edge can close a connection on *sustained* abuse rather
than on one burst. Idle buckets are forgotten by ``prune`` so the table stays small.
"""

from __future__ import annotations

from math import inf


class RateLimiter:
    __slots__ = ("rate", "burst", "_buckets", "_strikes")

    def __init__(self, rate_per_s: float, burst: float) -> None:
        if rate_per_s <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate, self.burst = float(rate_per_s), float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at_s)
        self._strikes: dict[str, int] = {}

    def take(self, key: str, now_s: float, cost: float = 1.0) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now_s))
        tokens = min(self.burst, tokens + (now_s - at) * self.rate)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now_s)
            if key in self._strikes:
                del self._strikes[key]
            return 0.0
        self._buckets[key] = (tokens, now_s)
        self._strikes[key] = self._strikes.get(key, 0) + 1
        return (cost - tokens) / self.rate if cost <= self.burst else inf

    def strikes(self, key: str) -> int:
        return self._strikes.get(key, 0)

    def prune(self, now_s: float) -> int:
        """Forget buckets that are full again (nothing to remember); returns how many."""
        full_after = self.burst / self.rate
        stale = [k for k, (_, at) in self._buckets.items() if now_s - at >= full_after]
        for k in stale:
            del self._buckets[k]
            self._strikes.pop(k, None)
        return len(stale)

    def __len__(self) -> int:
        return len(self._buckets)
