"""The collector's pauses are timed and exposed (``exchange_gc_pause_us``)."""

from __future__ import annotations

import gc

from exchange import gcpolicy
from exchange.metrics import Metrics


def test_every_collection_is_timed_and_counted_by_generation():
    m = Metrics()
    before = list(gc.callbacks)
    try:
        gcpolicy.watch(m)
        gcpolicy.watch(m)  # idempotent: one callback, not two
        assert sum(getattr(c, "__qualname__", "") == "watch.<locals>.callback" for c in gc.callbacks) == 1
        gc.collect(0)
        gc.collect(1)
        assert m.gc_collections[0] >= 1 and m.gc_collections[1] >= 1
        assert m.gc_pause_us.n == sum(m.gc_collections)
        text = m.render({})
        assert "exchange_gc_pause_us_count" in text and 'exchange_gc_collections_total{generation="1"}' in text
    finally:
        gc.callbacks[:] = before
