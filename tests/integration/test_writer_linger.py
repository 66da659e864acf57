"""The writer's linger: records nobody waits for share a commit; a waiter never waits for it.
Real stores (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time

import pytest

from billing.backends import open_store
from billing.records import AuditEvent

from tests.integration.ledgerkit import NOV_NS, opened


def _event(i: int) -> AuditEvent:
    return AuditEvent(NOV_NS + i, "decision", f"call_{i:04d}", None, {"i": i})


def test_unawaited_records_put_one_by_one_share_one_commit(db_url):
    async def go() -> tuple[int, int]:
        async with opened(db_url, linger_s=0.5) as (store, writer):
            for i in range(20):
                writer.put([_event(i)])
                await asyncio.sleep(0.001)  # the writer runs between puts, as between requests
            await writer.flush(5)
            rows = await store.audit_query(None, None, NOV_NS, NOV_NS + 100, 100, 0)
            return writer.batches, len(rows)

    batches, rows = asyncio.run(go())
    assert rows == 20
    assert batches == 1, f"20 unawaited records took {batches} commits"


def test_without_linger_each_record_put_between_commits_gets_its_own(db_url):
    async def go() -> int:
        async with opened(db_url) as (_, writer):
            for i in range(5):
                writer.put([_event(i)])
                await writer.flush(5)
            return writer.batches

    assert asyncio.run(go()) == 5


def test_a_waiter_ends_the_linger_at_once(db_url):
    async def go() -> float:
        async with opened(db_url, linger_s=30.0) as (_, writer):
            writer.put([_event(1)])
            await asyncio.sleep(0.01)  # the writer is lingering now
            seq = writer.put([_event(2)])
            t0 = time.monotonic()
            await writer.wait(seq, 10)  # a linger of 30 s would time this out
            return time.monotonic() - t0

    assert asyncio.run(go()) < 10


def test_a_full_batch_ends_the_linger(db_url):
    async def go() -> int:
        async with opened(db_url, linger_s=30.0, max_batch=10) as (_, writer):
            writer.put([_event(i) for i in range(10)])
            for _ in range(500):
                await asyncio.sleep(0.01)
                if writer.committed == 10:
                    break
            return writer.committed

    assert asyncio.run(go()) == 10


@pytest.mark.parametrize("url, ok", [
    ("sqlite:///x.db?synchronous=normal", True), ("sqlite:///x.db?synchronous=full", True), ("sqlite:///x.db", True),
    ("sqlite:///x.db?synchronous=off", False), ("sqlite:///x.db?journal=delete", False),
])
def test_the_sqlite_url_takes_only_the_synchronous_option(url, ok):
    if ok:
        store = open_store(url)
        assert store.path == "x.db"  # type: ignore[attr-defined]
    else:
        with pytest.raises(ValueError, match="unsupported SQLite URL option"):
            open_store(url)
