"""Garbage-collector policy for a latency-bound process.

The book, the accounts and the ledger hold hundreds of thousands of long-lived objects. A
default full collection walks all of them (tens of milliseconds at 100K campaigns), and
the default young-generation threshold (700 allocations) runs a collection every few
decisions. Measured with ``python -m bench.decision`` at 1K campaigns: p99 51 µs with the
defaults, 37 µs with this policy (p50 unchanged).

The policy: a young generation of 50,000 allocations, and ``gc.freeze()`` after start-up
and then every second, which moves every surviving object out of the collector's sight
(objects are still freed by reference counting as usual). The cost is that reference
cycles that die after being frozen are not reclaimed; the exchange's own data is acyclic,
and wire messages opt out of tracking altogether.

Why every second, measured (``watch`` logs pauses over 5 ms; the load test at 100,000
campaigns): freezing once a minute left the 100,000 campaigns a buyer had just streamed in
the older generations for up to a minute, so collections walked them: gen-1 pauses of
175-213 ms and gen-0 pauses up to 93 ms, long enough for RTB answers to miss their 50 ms
deadline. Freezing every second, the longest pause in the same run was 12 ms (a gen-0
collection of 50,000 young objects), and at 1,000 campaigns no pause reached 5 ms. The heaps'
entries also hold only integers (``exchange/book.py``), so the collector untracks them.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter_ns
from typing import Any

YOUNG = 50_000
SLOW_PAUSE_US = 5_000  # a pause this long is logged (it stalls every socket and decision at once)
log = logging.getLogger("exchange.gc")
FREEZE_EVERY_S = 1


def tune() -> None:
    gc.set_threshold(YOUNG, 20, 100)
    gc.freeze()


def settle() -> None:
    """Freeze what survived since the last call (O(1): a list splice)."""
    gc.freeze()


def relieve() -> None:
    """``settle`` once the young generation is half full: called after each batch of work
    (a publisher frame), so that under a sustained flow of decisions their records, which live
    on, are frozen before a young collection walks them. Measured with ``bench.decisions``
    (~9,000 decisions/s): a young collection every ~0.12 s, 5-9 ms each, 6 % of the server's
    CPU, and 58 of them collected nothing (no cycles die young on this path)."""
    if gc.get_count()[0] > YOUNG // 2:
        gc.freeze()


@contextmanager
def bulk() -> Iterator[None]:
    """A burst of objects built at once that die by reference counting (the book's saved rows:
    up to ~100,000 ``CampaignRow`` a round at 100,000 bids/s): no collection runs while they are
    built, and they are frozen after, so none walks them. Measured with the load test at 100,000
    campaigns: 55-136 young collections over 5 ms in a minute, up to 44 ms each, all of them
    collecting nothing, with ~50,000 of these rows in the young generation every time."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was:
            gc.enable()


def watch(metrics: Any) -> None:
    """Time every collection into ``metrics.gc_pause_us`` (and count them by generation); a
    pause over ``SLOW_PAUSE_US`` is logged with its generation and how many objects it freed."""
    started = [0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = perf_counter_ns()
            return
        us = (perf_counter_ns() - started[0]) // 1000
        metrics.gc_pause_us.observe(us)
        metrics.gc_collections[info["generation"]] += 1
        if us >= SLOW_PAUSE_US:
            log.info("gc_pause", extra={"generation": info["generation"], "pause_us": us, "collected": info["collected"]})

    gc.callbacks[:] = [c for c in gc.callbacks if getattr(c, "__qualname__", "") != callback.__qualname__]
    gc.callbacks.append(callback)
