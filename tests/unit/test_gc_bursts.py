"""The book's save builds thousands of rows at once under a bid stream (~50,000 a round at
100,000 campaigns): no young collection may walk them, in the event loop's thread (``rows_of``:
built with the collector off, then frozen) or in the store's (``SqliteStore`` binds the rows'
parameters one at a time, each freed once bound). Such collections stalled the load test's event
loop for 30-44 ms, up to 136 times a minute, and made live bids miss their deadline."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from contextlib import contextmanager

from billing.sqlitestore import SqliteStore
from billing.store import CampaignRow
from exchange.bookstore import rows_of
from exchange.messages import Campaign
from routing.capacity import Capacity
from routing.standing import Standing

N = 20_000


@contextmanager
def young_collections() -> Iterator[list[int]]:
    """Counts collections of the young generation while a small threshold makes a burst of
    tracked objects trigger them."""
    seen: list[int] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 0:
            seen.append(1)

    old = gc.get_threshold()
    gc.collect()
    gc.set_threshold(1000, 10, 10)
    gc.callbacks.append(callback)
    try:
        yield seen
    finally:
        gc.callbacks.remove(callback)
        gc.set_threshold(*old)
        gc.unfreeze()


def test_the_books_rows_are_built_without_a_collection() -> None:
    spec = Campaign(id="c", vertical="v", bid_cents=1000, destination="+18005550199", min_duration_s=60)
    standings = [Standing(f"b{i % 50}", spec, Capacity()) for i in range(N)]
    for i, s in enumerate(standings):
        s.live = True
        s.id = f"c{i}"
    with young_collections() as seen:
        rows = rows_of([], standings, 1)
    assert len(rows) == N and not seen


def test_the_sqlite_store_saves_a_round_of_prices_without_a_collection(tmp_path) -> None:
    async def run() -> list[int]:
        store = SqliteStore(str(tmp_path / "book.db"))
        await store.open()
        try:
            await store.save_campaigns([CampaignRow("b", f"c{i}", '{"id":"c"}', 1000, False, 1) for i in range(200)])
            prices = [CampaignRow("b", f"c{i % 200}", None, 1000 + i, False, 2 + i) for i in range(N)]
            with young_collections() as seen:
                await store.save_campaigns(prices)
            return seen
        finally:
            await store.close()

    assert not asyncio.run(run())
