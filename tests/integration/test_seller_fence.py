"""The seller's fence (migration 0006, ``Store.take_seller``): once another node has become the
market's seller in the database, the previous seller's writer cannot commit anything, however
long it believed its lease in Redis; a batch it was committing finishes before the new seller's
epoch is taken. Real PostgreSQL, two stores and writers on one schema."""

from __future__ import annotations

import asyncio

import pytest

from billing import postings
from billing.store import RecordRefused, StoreRefused
from tests.integration.ledgerkit import NOV_NS, opened


async def stored_keys(store) -> list[tuple[str, str]]:
    return sorted(tuple(r) for r in await store.fetch("SELECT reference, kind FROM entries"))


def test_a_previous_seller_is_fenced_out_of_the_ledger_by_the_new_sellers_epoch(pg_url):
    async def body() -> None:
        async with opened(pg_url) as (old, old_writer):
            assert await old.take_seller("m", "node-a", NOV_NS) == 1
            await old_writer.wait(old_writer.put([postings.deposit("buyer:b1", 100, "dep-0", NOV_NS)]), 10)
            async with opened(pg_url) as (new, new_writer):
                assert await new.take_seller("m", "node-b", NOV_NS) == 2
                # the old seller, still running (stalled, or cut off from Redis), writes again: refused, nothing stored
                seq = old_writer.put([postings.deposit("buyer:b1", 100, "dep-1", NOV_NS)])
                with pytest.raises(StoreRefused) as caught:
                    await old_writer.wait(seq, 10)
                assert not isinstance(caught.value, RecordRefused) and "fenced" in str(caught.value)
                assert old_writer.state == "stopped"
                # the new seller writes on
                await new_writer.wait(new_writer.put([postings.deposit("buyer:b1", 100, "dep-2", NOV_NS)]), 10)
                assert sorted(await stored_keys(new)) == [("dep-0", "deposit"), ("dep-2", "deposit")]
                assert await new.fetch("SELECT epoch, node_id FROM market_seller WHERE market = ?", "m") == [(2, "node-b")]

    asyncio.run(body())


def test_the_new_sellers_epoch_waits_for_a_batch_the_previous_seller_is_committing(pg_url):
    """The fence row is held FOR SHARE by a committing batch: taking the epoch waits for it, so
    no batch of the old seller commits after the new one has read the ledger."""
    async def body() -> None:
        async with opened(pg_url) as (old, _):
            await old.take_seller("m", "node-a", NOV_NS)
            conn = await old._connect()  # type: ignore[attr-defined]
            try:
                tx = conn.transaction()
                await tx.start()
                assert await conn.fetchval("SELECT epoch FROM market_seller WHERE market = $1 AND epoch = $2 FOR SHARE", "m", 1) == 1
                async with opened(pg_url) as (new, _):
                    taking = asyncio.ensure_future(new.take_seller("m", "node-b", NOV_NS))
                    await asyncio.sleep(0.5)
                    assert not taking.done()  # held back by the old seller's open batch
                    await tx.commit()
                    assert await asyncio.wait_for(taking, 10) == 2
            finally:
                await conn.close()

    asyncio.run(body())
