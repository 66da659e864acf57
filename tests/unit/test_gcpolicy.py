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
        assert f"exchange_gc_frozen_objects {gc.get_freeze_count()}" in text  # the freeze's trade-off, observable
    finally:
        gc.callbacks[:] = before


def test_relieve_freezes_only_a_half_full_young_generation():
    before = gc.get_threshold()
    try:
        gc.set_threshold(gcpolicy.YOUNG, 20, 100)
        gc.freeze()
        frozen = gc.get_freeze_count()
        gcpolicy.relieve()  # nearly empty: nothing moves
        assert gc.get_freeze_count() == frozen
        keep = [[i] for i in range(gcpolicy.YOUNG // 2 + 1000)]  # survivors, as decisions' records are
        gcpolicy.relieve()
        assert gc.get_freeze_count() >= frozen + len(keep) and gc.get_count()[0] < gcpolicy.YOUNG // 2
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
