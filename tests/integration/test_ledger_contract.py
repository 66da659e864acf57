"""The durable ledger's contract, against the real PostgreSQL and SQLite stores and the real
group-commit writer: concurrency, the database's own refusal of unbalanced or altered money,
idempotent replays, recovery from a killed connection, an unreachable database, and the
audit chain's detection of a row changed behind the triggers."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import asyncpg
import pytest

from billing import postings
from billing.audit import Chain, verify
from billing.cli import main
from billing.postings import Entry, Leg
from billing.reconcile import reconcile
from billing.records import AccountRow, AuditEvent, HoldEvent
from billing.backends import open_store
from billing.store import Batch, RecordRefused, StoreRefused, StoreUnavailable
from billing.writer import Writer
from tests.integration.conftest import PG_BASE
from tests.integration.ledgerkit import (
    NOV_NS, NS, balances, behind_triggers, billable_call, count, expected_balances, opened, snapshot,
)

RAW_REFUSED = (asyncpg.PostgresError, sqlite3.DatabaseError)
HOUR_NS = 3600 * NS
DAY = 86_400 * NS


def run(coro):
    return asyncio.run(coro)


def entries_of(records) -> list[Entry]:
    return [r for r in records if isinstance(r, Entry)]


async def stored_keys(store) -> list[tuple[str, str]]:
    return sorted(tuple(r) for r in await store.fetch("SELECT reference, kind FROM entries"))


async def legs_per_entry(store) -> dict[tuple[str, str], list[tuple[str, int]]]:
    out: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for ref, kind, account, amount in await store.fetch(
            "SELECT e.reference, e.kind, l.account, l.amount_cents FROM entries e JOIN legs l ON l.entry_id = e.id"):
        out.setdefault((ref, kind), []).append((account, int(amount)))
    return {k: sorted(v) for k, v in out.items()}


def writer_health(writer: Writer) -> str:
    """Why a writer is not making progress, for failure messages."""
    task = writer._task
    if task is not None and task.done():
        return f"the writer task died: {task.exception()!r} (state still {writer.state!r})"
    return f"writer state {writer.state!r}, error {writer.error!r}, retries {writer.retries}"


def task_records(t: int, i: int) -> list:
    """Task ``t``'s ``i``-th posting: a deposit or a whole billable call."""
    if i % 2 == 0:
        return [postings.deposit(f"buyer:b{t % 7}", 1_000 + i, f"dep-{t}-{i}", NOV_NS + i)]
    return billable_call(f"call-{t}-{i}", f"b{t % 7}", f"p{t % 5}", 100 + 7 * i + t, NOV_NS + i)


# ---------------------------------------------------------------------- concurrency
def test_concurrent_postings_through_the_writer_are_all_present_once_with_balances_right(db_url):
    tasks, per_task = 50, 100

    async def body():
        async with opened(db_url) as (store, writer):
            async def poster(t: int) -> list[Entry]:
                posted: list[Entry] = []
                for i in range(per_task):
                    recs = task_records(t, i)
                    await writer.wait(writer.put(recs), 30)
                    posted += entries_of(recs)
                # a replay of the task's first posting: acknowledged, and a no-op
                await writer.wait(writer.put(task_records(t, 0)), 30)
                return posted

            results = await asyncio.gather(*(poster(t) for t in range(tasks)))
            posted = [e for r in results for e in r]
            assert len(posted) == tasks * per_task
            assert await stored_keys(store) == sorted(e.key for e in posted)
            stored_legs = await legs_per_entry(store)
            assert stored_legs == {e.key: sorted((a, c) for a, c in e.legs) for e in posted}
            assert await balances(store) == expected_balances(posted)
            assert writer.batches < tasks * (per_task + 1), "the writer should group concurrent postings"
            report = await reconcile(store, NOV_NS + DAY, HOUR_NS)
            assert report.ok, report.text()
            # every money movement is on the audit trail, and the chain verifies
            rows = await store.audit_query(None, None, None, None, limit=100_000)
            audited = {(b["reference"], b["entry_kind"]) for b in (json.loads(r.body) for r in rows if r.kind == "entry")}
            assert audited == {e.key for e in posted}
            assert verify(rows)[2] is None

    run(body())



# ---------------------------------------------------------------------- the database refuses bad money
UNBALANCED = {
    "legs_sum_to_one_cent": (Leg("buyer:b1", -500), Leg("publisher:p1", 400), Leg("exchange:revenue", 101)),
    "one_leg_of_zero": (Leg("buyer:b1", 0),),
    "no_legs": (),
}


@pytest.mark.parametrize("legs", UNBALANCED.values(), ids=UNBALANCED.keys())
def test_an_unbalanced_entry_is_refused_by_the_database_and_nothing_of_its_batch_is_written(db_url, legs):
    async def body():
        store = open_store(db_url)
        await store.open()
        try:
            good = postings.deposit("buyer:b1", 5_000, "dep-1", NOV_NS)
            bad = Entry("call-bad", "charge", legs, NOV_NS)  # bypasses postings.check_balanced
            batch = Batch(entries=[good, bad], holds=[HoldEvent("call-bad", 0, "hold", "buyer:b1", 500, NOV_NS)],
                          accounts=[AccountRow("b1", "buyer", "Acme", "digest-b1", 0, NOV_NS)])
            with pytest.raises(StoreRefused):
                await store.write(batch)
            for table in ("entries", "legs", "balances", "holds", "accounts"):
                assert await count(store, table) == 0, table
            # the store is still usable: the good entry alone goes in
            assert await store.write(Batch(entries=[good])) == 1
            assert await balances(store) == {"world:deposits": -5_000, "buyer:b1": 5_000}
        finally:
            await store.close()

    run(body())


def test_a_refused_entry_is_refused_to_its_waiter_alone_and_the_writer_goes_on(db_url):
    async def body():
        async with opened(db_url) as (store, writer):
            await writer.wait(writer.put([postings.deposit("buyer:b1", 100, "dep-0", NOV_NS)]), 10)
            seq = writer.put([Entry("call-bad", "charge", UNBALANCED["legs_sum_to_one_cent"], NOV_NS)])
            with pytest.raises(RecordRefused):
                await writer.wait(seq, 10)
            assert writer.state == "up"
            await writer.wait(writer.put([postings.deposit("buyer:b1", 100, "dep-1", NOV_NS)]), 10)
            assert await stored_keys(store) == [("dep-0", "deposit"), ("dep-1", "deposit")]

    run(body())


def test_the_writer_stops_when_its_audit_chain_is_forked_and_its_waiters_hear_it(pg_url):
    async def body():
        async with opened(pg_url) as (store, writer):
            await writer.wait(writer.put([postings.deposit("buyer:b1", 100, "dep-0", NOV_NS)]), 10)
            # a second writer took the next seq behind this one's back
            await store.execute_raw("INSERT INTO audit VALUES (2, 0, 'entry', NULL, NULL, '{}', $1, $2)", bytes(32), bytes(32))
            seq = writer.put([postings.deposit("buyer:b1", 100, "dep-1", NOV_NS)])
            with pytest.raises(StoreRefused) as caught:
                await writer.wait(seq, 10)
            assert not isinstance(caught.value, RecordRefused)
            assert writer.state == "stopped"
            assert await stored_keys(store) == [("dep-0", "deposit")]

    run(body())


def test_a_batch_written_twice_is_a_no_op_the_second_time(db_url):
    async def body():
        store = open_store(db_url)
        await store.open()
        try:
            chain = Chain()
            records = billable_call("call-1", "b1", "p1", 2_500, NOV_NS) + billable_call("call-2", "b1", "p2", 999, NOV_NS)
            entries = [postings.deposit("buyer:b1", 10_000, "dep-1", NOV_NS)] + entries_of(records)
            batch = Batch(
                entries=entries,
                holds=[r for r in records if isinstance(r, HoldEvent)],
                outcomes=[r for r in records if type(r).__name__ == "CallOutcome"],
                accounts=[AccountRow("b1", "buyer", "Acme", "digest-b1", 0, NOV_NS)],
                audit=[chain.append(AuditEvent(NOV_NS, "decision", "call-1", "+12125550100", {"n": 1}))],
            )
            assert await store.write(batch) == 3
            first = await snapshot(store)
            assert await store.write(batch) == 0
            assert await snapshot(store) == first
            assert await balances(store) == expected_balances(entries)
        finally:
            await store.close()

    run(body())


ADD_LEGS = {
    "balanced_pair": "INSERT INTO legs (entry_id, account, amount_cents) VALUES ({id}, 'buyer:b1', 500), ({id}, 'buyer:b2', -500)",
    "single_leg": "INSERT INTO legs (entry_id, account, amount_cents) VALUES ({id}, 'buyer:b1', 0)",
    "leg_without_entry": "INSERT INTO legs (entry_id, account, amount_cents) VALUES ({id} + 1000, 'buyer:b1', 0)",
}


@pytest.mark.parametrize("sql", ADD_LEGS.values(), ids=ADD_LEGS.keys())
def test_legs_cannot_be_added_to_a_committed_entry(db_url, sql):
    async def body():
        store = open_store(db_url)
        await store.open()
        try:
            await store.write(Batch(entries=[postings.deposit("buyer:b1", 700, "dep-1", NOV_NS)]))
            before = await snapshot(store)
            entry_id = (await store.fetch("SELECT id FROM entries"))[0][0]
            with pytest.raises(RAW_REFUSED):
                await store.execute_raw(sql.format(id=entry_id))
            assert await snapshot(store) == before
        finally:
            await store.close()

    run(body())


CHANGES = [
    ("entries", "UPDATE entries SET memo = 'edited'"),
    ("entries", "DELETE FROM entries"),
    ("legs", "UPDATE legs SET amount_cents = amount_cents * 2"),
    ("legs", "DELETE FROM legs"),
    ("audit", "UPDATE audit SET body = '{}'"),
    ("audit", "DELETE FROM audit"),
    ("holds", "UPDATE holds SET amount_cents = 0"),
    ("call_outcomes", "DELETE FROM call_outcomes"),
]


@pytest.mark.parametrize("table,sql", CHANGES, ids=[s.split()[0] + "-" + t for t, s in CHANGES])
def test_money_and_audit_rows_cannot_be_updated_or_deleted(db_url, table, sql):
    async def body():
        async with opened(db_url) as (store, writer):
            await writer.wait(writer.put(billable_call("call-1", "b1", "p1", 1_000, NOV_NS)), 10)
            before = await snapshot(store)
            assert before[table], f"{table} should have rows to protect"
            with pytest.raises(RAW_REFUSED):
                await store.execute_raw(sql)
            assert await snapshot(store) == before

    run(body())


# ---------------------------------------------------------------------- PostgreSQL: the connection dies
def test_writer_connection_killed_mid_stream_loses_and_duplicates_nothing(pg_url):
    async def body():
        async with opened(pg_url, retry_max_s=0.2) as (store, writer):
            admin = await asyncpg.connect(PG_BASE)
            stop = asyncio.Event()
            acked: list[Entry] = []
            put: list[Entry] = []
            timeouts = 0

            async def poster(t: int) -> None:
                nonlocal timeouts
                i = 0
                while not stop.is_set():
                    recs = task_records(t, i)
                    put.extend(entries_of(recs))
                    try:
                        await writer.wait(writer.put(recs), 5)
                        acked.extend(entries_of(recs))
                    except StoreUnavailable:
                        timeouts += 1
                    i += 1

            async def killer() -> int:
                kills = 0
                for _ in range(3):
                    floor = writer.committed
                    while writer.committed < floor + 200:  # let the stream run
                        await asyncio.sleep(0.005)
                    pid = store.writer_pid()
                    assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
                    kills += 1
                    deadline = time.monotonic() + 20
                    while store.writer_pid() in (pid, None) or writer.state != "up":
                        assert time.monotonic() < deadline, f"the writer did not recover: {writer_health(writer)}"
                        await asyncio.sleep(0.01)
                return kills

            posters = [asyncio.create_task(poster(t)) for t in range(10)]
            try:
                kills = await killer()
                floor = writer.committed
                while writer.committed < floor + 200:  # and it keeps committing afterwards
                    await asyncio.sleep(0.005)
            finally:
                stop.set()
                await asyncio.gather(*posters)
                await admin.close()
            await writer.flush(20)

            assert kills == 3 and writer.retries >= 1 and writer.state == "up"
            stored = await stored_keys(store)
            assert len(stored) == len(set(stored))
            assert set(e.key for e in acked) <= set(stored), "an acknowledged entry was lost"
            assert stored == sorted(e.key for e in put), "every entry put is written exactly once"
            assert await legs_per_entry(store) == {e.key: sorted((a, c) for a, c in e.legs) for e in put}
            assert await balances(store) == expected_balances(put)
            report = await reconcile(store, NOV_NS + DAY, HOUR_NS)
            assert report.ok, report.text()
            rows = await store.audit_query(None, None, None, None, limit=1_000_000)
            assert verify(rows)[2] is None
            assert sum(1 for r in rows if r.kind == "entry") == len(put), "an entry is on the audit trail once"
            return len(acked), timeouts

    n_acked, _ = run(body())
    assert n_acked >= 100


def test_a_connection_killed_just_before_each_write_never_stops_the_writer(pg_url):
    """The server ends the writer's session right before each batch: twelve kills, twelve recoveries."""
    async def body():
        async with opened(pg_url, retry_max_s=0.05) as (store, writer):
            admin = await asyncpg.connect(PG_BASE)
            put = []
            try:
                for i in range(12):
                    assert await admin.fetchval("SELECT pg_terminate_backend($1)", store.writer_pid())
                    entry = postings.deposit("buyer:b1", 100 + i, f"dep-{i}", NOV_NS + i)
                    put.append(entry)
                    try:
                        await writer.wait(writer.put([entry]), 5)
                    except StoreUnavailable:
                        pytest.fail(f"round {i}: not acknowledged within 5 s; {writer_health(writer)}")
            finally:
                await admin.close()
            assert writer.state == "up" and writer.retries >= 1
            assert await stored_keys(store) == sorted(e.key for e in put)
            assert await balances(store) == expected_balances(put)

    run(body())


def test_writer_with_the_database_down_raises_store_unavailable_after_its_timeout_then_recovers(pg_url):
    down = PG_BASE.replace("127.0.0.1:5432", "127.0.0.1:1").replace("@127.0.0.1/", "@127.0.0.1:1/")
    assert down != PG_BASE

    async def body():
        bad = open_store(down)
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await bad.open()
        assert time.monotonic() - t0 < 5
        await bad.close()

        async with opened(pg_url, retry_max_s=0.1) as (store, writer):
            await writer.wait(writer.put([postings.deposit("buyer:b1", 100, "dep-0", NOV_NS)]), 10)
            # the database goes away: the writer's connection dies and every reconnect is refused
            good_dsn = store.dsn  # type: ignore[attr-defined]
            store.dsn = down.split("?")[0]  # type: ignore[attr-defined]
            admin = await asyncpg.connect(PG_BASE)
            try:
                await admin.fetchval("SELECT pg_terminate_backend($1)", store.writer_pid())  # type: ignore[attr-defined]
            finally:
                await admin.close()
            seq = writer.put([postings.deposit("buyer:b1", 200, "dep-1", NOV_NS)])
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await writer.wait(seq, 0.5)
            waited = time.monotonic() - t0
            assert 0.45 <= waited < 2, waited
            assert writer.state == "down" and writer.committed < seq, writer_health(writer)
            # it comes back: the same record is committed once
            store.dsn = good_dsn  # type: ignore[attr-defined]
            await writer.wait(seq, 10)
            assert writer.state == "up"
            assert await stored_keys(store) == [("dep-0", "deposit"), ("dep-1", "deposit")]
            assert await balances(store) == {"buyer:b1": 300, "world:deposits": -300}

    run(body())


# ---------------------------------------------------------------------- the audit chain
TAMPER = {
    "edited": ["UPDATE audit SET body = '{\"amount_cents\":1}' WHERE seq = 7"],
    "deleted": ["DELETE FROM audit WHERE seq = 7"],
}


@pytest.mark.parametrize("statements", TAMPER.values(), ids=TAMPER.keys())
def test_audit_row_altered_behind_the_trigger_is_named_by_verify(db_url, statements, capsys):
    async def write_events():
        async with opened(db_url) as (store, writer):
            events = [AuditEvent(NOV_NS + i, "decision", f"call-{i}", "+12125550100", {"step": i}) for i in range(20)]
            await writer.wait(writer.put(events), 10)

    async def tamper() -> None:
        store = open_store(db_url)
        await store.open()
        try:
            await behind_triggers(store, "audit", *statements)
            with pytest.raises(RAW_REFUSED):  # the triggers are back
                await store.execute_raw("UPDATE audit SET body = '{}' WHERE seq = 3")
            rows = await store.audit_query(None, None, None, None, limit=100)
            broken = verify(rows)[2]
            assert broken is not None and broken.seq == 7, broken
        finally:
            await store.close()

    run(write_events())
    assert main(["audit", "verify", "--database-url", db_url, "--page", "3"]) == 0
    assert "intact: 20 records" in capsys.readouterr().out
    run(tamper())
    assert main(["audit", "verify", "--database-url", db_url, "--page", "3"]) == 1
    out = capsys.readouterr().out
    assert "BROKEN at record 7" in out and "records 1..6 verify" in out, out
