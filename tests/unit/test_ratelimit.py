"""The per-key token bucket (``exchange.ratelimit``): pure, so tested with a made-up clock."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.ratelimit import RateLimiter


def test_burst_then_refill_at_rate():
    lim = RateLimiter(10, 5)
    assert [lim.take("k", 0.0) for _ in range(5)] == [0.0] * 5
    wait = lim.take("k", 0.0)
    assert wait == 0.1 and lim.strikes("k") == 1  # one token comes back in 1/10 s
    assert lim.take("k", 0.05) == 0.05 and lim.strikes("k") == 2
    assert lim.take("k", 0.1) == 0.0 and lim.strikes("k") == 0  # a success ends the strikes
    assert lim.take("other", 0.1) == 0.0  # one bucket per key


def test_a_cost_over_the_burst_is_never_taken_and_says_so():
    lim = RateLimiter(1000, 100)
    assert lim.take("k", 0.0, 101) == math.inf  # a full bucket cannot hold it: not 0.0 (which means taken)
    assert lim.strikes("k") == 1
    assert lim.take("k", 0.0, 100) == 0.0  # nothing was spent by the refusal


def test_a_refusal_spends_nothing_and_retry_after_is_exact():
    lim = RateLimiter(4, 8)
    assert lim.take("k", 0.0, 6) == 0.0
    wait = lim.take("k", 0.0, 5)  # 2 left, 3 short at 4/s
    assert wait == 0.75
    assert lim.take("k", 0.75, 5) == 0.0


def test_prune_forgets_only_buckets_full_again():
    lim = RateLimiter(10, 10)
    lim.take("a", 0.0, 10)
    lim.take("b", 0.5, 10)
    assert lim.prune(1.2) == 1 and len(lim) == 1  # a is full again after 1 s; b is not
    assert abs(lim.take("b", 1.2, 10) - 0.3) < 1e-9  # b still remembers its spend: 7 tokens, 3 short


def test_invalid_limits_are_refused():
    for rate, burst in ((0, 1), (1, 0), (-1, 5)):
        try:
            RateLimiter(rate, burst)
        except ValueError:
            continue
        raise AssertionError((rate, burst))


@settings(max_examples=300, deadline=None)
@given(rate=st.integers(1, 1000), burst=st.integers(1, 500),
       steps=st.lists(st.tuples(st.floats(0, 2, allow_nan=False), st.integers(1, 600)), max_size=60))
def test_never_more_than_burst_plus_rate_times_elapsed(rate: int, burst: int, steps) -> None:
    """Whatever the pattern of requests, what is granted over [0, t] is at most
    ``burst + rate * t``, and a refused request's wait is the exact time to afford it."""
    lim = RateLimiter(rate, burst)
    now = granted = 0.0
    for dt, cost in steps:
        now += dt
        wait = lim.take("k", now, cost)
        if wait == 0.0:
            granted += cost
        elif cost > burst:
            assert wait == math.inf
        else:
            assert wait > 0 and lim.take("k", now + wait * (1 + 1e-9) + 1e-9, cost) == 0.0
            now += wait * (1 + 1e-9) + 1e-9
            granted += cost
        assert granted <= burst + rate * now + 1e-6
