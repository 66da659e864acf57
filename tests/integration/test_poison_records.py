"""A record the database refuses (a NUL byte PostgreSQL cannot store, an integer over 64 bits,
an unbalanced entry) is refused to its own caller alone: the writer splits the batch by
operation, every other operation of the batch commits, the audit chain has no gap and the
writer keeps running. Real PostgreSQL and SQLite, the real writer."""

from __future__ import annotations

import asyncio

import pytest

from billing import postings
from billing.audit import verify
from billing.postings import Entry, Leg
from billing.records import AccountRow, AuditEvent
from billing.store import RecordRefused
from tests.integration.ledgerkit import NOV_NS, billable_call, opened


def poisons(url: str) -> dict[str, list]:
    out = {
        "unbalanced_entry": [Entry("call-bad", "charge", (Leg("buyer:b1", -500), Leg("publisher:p1", 499)), NOV_NS)],
        "integer_over_64_bits": [postings.deposit("buyer:b1", 2**70, "dep-huge", NOV_NS)],
        "account_of_unknown_kind": [AccountRow("x1", "nobody", "X", "digest-x1", 0, NOV_NS)],
        "audit_body_not_encodable": [AuditEvent(NOV_NS, "decision", "call-odd", None, {"s": "\ud800"})],
        "lone_surrogate_in_memo": [Entry("dep-sur", "deposit", (Leg("buyer:b1", 5), Leg("world:deposits", -5)), NOV_NS, "\udc00")],
    }
    if url.startswith("postgresql"):
        out["nul_in_account_name"] = [AccountRow("p9", "publisher", "Acme\x00Calls", "digest-p9", 0, NOV_NS)]
        out["nul_in_refund_reason"] = [Entry("call-1:r1", "refund", (Leg("buyer:b1", 10), Leg("publisher:p1", -10)),
                                             NOV_NS, "reason\x00")]
    return out


def good(i: int) -> list:
    if i % 2:
        return billable_call(f"call-g{i}", "b1", "p1", 100 + i, NOV_NS + i)
    return [postings.deposit("buyer:b1", 1_000 + i, f"dep-{i}", NOV_NS + i),
            AccountRow(f"a{i}", "buyer", f"Buyer {i}", f"digest-a{i}", 0, NOV_NS + i)]


@pytest.mark.parametrize("where", ["first", "middle", "last", "twice"])
def test_a_poison_record_among_good_ones_is_refused_alone_and_the_rest_commits(db_url, where):
    async def body():
        async with opened(db_url) as (store, writer):
            for k, (name, poison) in enumerate(poisons(db_url).items()):
                base = writer.committed
                slots = {"first": [0], "middle": [5], "last": [10], "twice": [2, 8]}[where]
                seqs, bad = [], []
                for i in range(11):  # put synchronously: one batch, poison between good operations
                    if i in slots:
                        bad.append(writer.put(poison))
                    seqs.append(writer.put(good(100 * k + i)))
                for s in bad:
                    with pytest.raises(RecordRefused) as caught:
                        await writer.wait(s, 10)
                    assert "refused" in str(caught.value)
                for s in seqs:
                    await writer.wait(s, 10)  # every good operation committed
                assert writer.state == "up", (name, writer.error)
                assert writer.committed == writer.enqueued > base
            assert writer.records_refused >= len(poisons(db_url))
            # everything good is stored, nothing of the poison is
            refs = {r[0] for r in await store.fetch("SELECT reference FROM entries")}
            assert "call-bad" not in refs and "dep-huge" not in refs and "call-1:r1" not in refs
            assert not await store.fetch("SELECT 1 FROM accounts WHERE id IN ('x1', 'p9')")
            assert len([r for r in refs if r.startswith("dep-")]) == 6 * len(poisons(db_url))
            # the chain has no gap where the refused records were dropped, and it verifies
            rows = await store.audit_query(None, None, None, None, limit=100_000)
            assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
            assert verify(rows)[2] is None
            # and the writer goes on
            await writer.wait(writer.put([postings.deposit("buyer:b1", 7, "dep-after", NOV_NS)]), 10)

    asyncio.run(body())


def test_the_refusal_names_the_record(pg_url):
    async def body():
        async with opened(pg_url) as (_store, writer):
            seq = writer.put([AccountRow("p9", "publisher", "Acme\x00Calls", "digest-p9", 0, NOV_NS)])
            with pytest.raises(RecordRefused) as caught:
                await writer.wait(seq, 10)
            assert "account 'p9'" in str(caught.value)
            assert writer.state == "up"

    asyncio.run(body())


def test_a_poison_record_under_a_backlog_leaves_the_next_batch_chained_right(db_url):
    """With a backlog the writer takes (and chains) the next batch while the current one commits;
    when the current one is refused, the next is chained again after what was kept."""
    async def body():
        async with opened(db_url, max_batch=6) as (store, writer):
            seqs, bad = [], []
            for i in range(60):
                if i in (1, 13, 40):
                    bad.append(writer.put([Entry(f"call-bad{i}", "charge", (Leg("buyer:b1", -5), Leg("publisher:p1", 4)), NOV_NS)]))
                seqs.append(writer.put(good(i)))
            for s in bad:
                with pytest.raises(RecordRefused):
                    await writer.wait(s, 10)
            for s in seqs:
                await writer.wait(s, 10)
            assert writer.state == "up" and writer.batches > 10
            rows = await store.audit_query(None, None, None, None, limit=100_000)
            assert [r.seq for r in rows] == list(range(1, len(rows) + 1)) and verify(rows)[2] is None
            assert writer.head == (rows[-1].seq, rows[-1].hash)

    asyncio.run(body())
