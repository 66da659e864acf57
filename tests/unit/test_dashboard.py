"""The dashboard's per-interval decision time: the newest samples of the histogram's ring."""

from __future__ import annotations

from exchange.dashboard import interval_us
from exchange.metrics import DECISION_BUCKETS_US, Histogram


def test_interval_quantiles_read_only_the_samples_since_the_last_snapshot():
    h = Histogram(DECISION_BUCKETS_US, window=10)
    for v in range(1, 8):
        h.observe(v)
    assert interval_us(h, 7) is None
    assert interval_us(h, 3) == {"p50": 6, "p99": 7, "n": 4}  # 4, 5, 6, 7
    for v in range(100, 112):  # the ring wraps: the window now holds 102..111
        h.observe(v)
    assert interval_us(h, 7) == {"p50": 107, "p99": 111, "n": 10}  # more than the window: the window (p50: the upper median)
    assert interval_us(h, h.n - 3) == {"p50": 110, "p99": 111, "n": 3}  # 109, 110, 111 across the ring's seam
    h.observe(500)
    assert interval_us(h, h.n - 2) == {"p50": 500, "p99": 500, "n": 2}
