"""Consumer numbers at rest, on both stores: nothing in clear, erasure by crypto-shredding that
leaves the audit chain and the books whole, legal holds, retention, master key rotation and
the refusal of a wrong key.

The raw search reads the database itself (SQLite: the file and its write-ahead log, byte by
byte; PostgreSQL: every table of the test's schema dumped as text) for the digits of each
number in the encodings a thief would try: E.164, national, formatted, UTF-16, the integer's
bytes, base64 and hex of the text.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
from pathlib import Path
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from billing import keystore
from billing.backends import open_store
from billing.cli import _reconcile, _verify
from billing.records import AuditEvent, Record
from billing.store import Store
from billing.vault import ERASED, MasterKeyError, kids_in, new_master_key_text, parse_master_keys
from billing.writer import Writer
from exchange.privacy import HeldError, Privacy
from exchange.privacy_cli import ToolJournal
from exchange.settings import Settings
from tests.integration.ledgerkit import DAY_NS, NOV_NS, NS, billable_call

NPAS = ("415", "212", "312", "713", "305", "617")
MASTERS = parse_master_keys(new_master_key_text())


def numbers() -> st.SearchStrategy[list[str]]:
    one = st.tuples(st.sampled_from(NPAS), st.integers(200, 999), st.integers(0, 9999)).map(lambda t: f"+1{t[0]}{t[1]:03d}{t[2]:04d}")
    return st.lists(one, min_size=2, max_size=6, unique=True)


def encodings(e164: str) -> list[bytes]:
    """The ways a number's digits could sit in a file."""
    national = e164[2:]
    npa, exch, line = national[:3], national[3:6], national[6:]
    texts = [e164, e164[1:], national, f"({npa}) {exch}-{line}", f"{npa}-{exch}-{line}", f"{npa}.{exch}.{line}",
             f"{npa} {exch} {line}"]
    out = [t.encode() for t in texts]
    out += [t.encode("utf-16-le") for t in (e164, national)] + [t.encode("utf-16-be") for t in (e164, national)]
    for n in (int(e164[1:]), int(national)):
        out += [struct.pack(">q", n), struct.pack("<q", n), n.to_bytes(6, "big"), n.to_bytes(5, "big")]
    for t in (e164, national):
        out += [base64.b64encode(t.encode()).rstrip(b"="), base64.urlsafe_b64encode(t.encode()).rstrip(b"="),
                t.encode().hex().encode()]
    return out


async def raw_bytes(store: Store, url: str) -> bytes:
    """Everything the database holds, as bytes: SQLite's files; PostgreSQL's tables as text."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        return b"".join(Path(p).read_bytes() for p in (path, path + "-wal") if os.path.exists(p))
    tables = [r[0] for r in await store.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
    out = []
    for t in tables:
        for row in await store.fetch(f'SELECT t::text FROM "{t}" t'):
            out.append(row[0].encode())
    return b"\n".join(out)


def decision(call_id: str, number: str, at_ns: int, callee: str | None = "+18005550199") -> AuditEvent:
    request = {"caller": number, "vertical": "auto", **({"callee": callee} if callee else {})}
    return AuditEvent(at_ns, "decision", call_id, number, {
        "publisher": "p1", "request": request,
        "decision": {"decision": "routed", "reason": "ok"}, "compliance": {}, "bids": [], "routes": []})


@contextlib.asynccontextmanager
async def sealed_store(url: str, masters=MASTERS) -> AsyncIterator[tuple[Store, ToolJournal]]:
    store = open_store(url)
    await store.open()
    vault = await keystore.open_vault(store, masters, NOV_NS)
    j = ToolJournal(store, vault)
    await j.writer.start()
    try:
        yield store, j
    finally:
        await j.writer.close()
        await store.close()


async def write_calls(j: ToolJournal, nums: list[str]) -> dict[str, str]:
    """A billable call from each number; returns call id -> number."""
    calls, records = {}, []
    for i, n in enumerate(nums):
        cid = f"call_{i:04d}"
        at = NOV_NS + i * NS
        records += [decision(cid, n, at - 90 * NS), *billable_call(cid, "b1", "p1", 1000 + i, at)]
        calls[cid] = n
    await j.ack(j.record(*records))
    return calls


async def opened_numbers(url: str, masters=MASTERS) -> dict[str, str]:
    """call id -> the number its decision opens to, read back by a fresh vault (a restart)."""
    store = open_store(url)
    await store.open()
    try:
        vault = await keystore.open_vault(store, masters, NOV_NS)
        rows = await store.fetch("SELECT call_id, body FROM audit WHERE kind = 'decision' ORDER BY seq")
        out = {}
        for cid, body in rows:
            (value,) = [v for v in body.split('"') if v.startswith("enc1:")][-1:] or [None]
            await keystore.load_keys(store, vault, kids_in(body))
            consumer = body.split('"consumer":"', 1)[1].split('"', 1)[0]
            out[cid] = vault.open(consumer)
        return out
    finally:
        await store.close()


async def books_and_chain_ok(store: Store) -> None:
    assert await _verify(store, 500) == 0
    assert await _reconcile(store, 0, 50) == 0


async def erase_and_check(url: str, nums: list[str], victim: str) -> None:
    async with sealed_store(url) as (store, j):
        calls = await write_calls(j, nums)
        raw = await raw_bytes(store, url)
        for n in nums:  # sealed from the first write: no number in clear anywhere
            assert not [e for e in encodings(n) if e in raw], n
        blind = j.vault.blind(victim)
        wrapped = [r[0] for r in await store.fetch("SELECT wrapped FROM privacy_keys WHERE blind = ?", blind)]
        assert wrapped
        out = await Privacy(Settings(), j).erase(victim, NOV_NS + DAY_NS)
        assert out["keys_destroyed"] == len(wrapped) and out["number_hash"] == blind
        raw = await raw_bytes(store, url)
        for n in nums:
            assert not [e for e in encodings(n) if e in raw], n
        for w in wrapped:  # the shredded keys are gone from the file, not only from the table
            assert w.encode() not in raw
        await books_and_chain_ok(store)
        again = await Privacy(Settings(), j).erase(victim, NOV_NS + DAY_NS + 1)  # idempotent
        assert again["keys_destroyed"] == 0
        never = await Privacy(Settings(), j).erase("+19175550000", NOV_NS + DAY_NS + 2)  # never seen
        assert never["keys_destroyed"] == 0
        rows = await store.audit_query(None, blind, None, None)
        assert [r.kind for r in rows] == ["decision", "erasure", "erasure"]  # looked up by number, after erasure too
    opened = await opened_numbers(url)
    assert {cid: n for cid, n in opened.items()} == {cid: (ERASED if n == victim else n) for cid, n in calls.items()}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nums=numbers(), pick=st.integers(0, 5))
def test_after_erasure_no_number_is_recoverable_from_the_sqlite_file_and_verify_stays_green(tmp_path_factory, nums, pick):
    url = f"sqlite:///{tmp_path_factory.mktemp('privacy') / 'ledger.db'}"
    asyncio.run(erase_and_check(url, nums, nums[pick % len(nums)]))


def test_after_erasure_no_number_is_recoverable_from_the_postgres_tables(pg_url):
    asyncio.run(erase_and_check(pg_url, ["+14155550123", "+12125550199", "+13125550100"], "+14155550123"))


def test_a_wrong_or_missing_master_key_refuses_to_open_the_database(db_url):
    async def run() -> None:
        async with sealed_store(db_url) as (_, j):
            await write_calls(j, ["+14155550123"])
        store = open_store(db_url)
        await store.open()
        try:
            with pytest.raises(MasterKeyError, match="wrapped by master key"):
                await keystore.open_vault(store, parse_master_keys(new_master_key_text()), NOV_NS)
            assert await keystore.has_keys(store)
        finally:
            await store.close()

    asyncio.run(run())


def test_rotation_rewraps_every_key_so_the_new_master_alone_reads_everything(db_url):
    new = parse_master_keys(new_master_key_text())

    async def run() -> None:
        async with sealed_store(db_url) as (store, j):
            calls = await write_calls(j, ["+14155550123", "+12125550199"])
            j.vault.set_masters(new + MASTERS)
            rewrapped = await keystore.rewrap(store, j.vault, NOV_NS)
            assert rewrapped == 5  # the index key, one data key per caller, two for the callee (cached once it came back)
            assert await keystore.key_census(store) == {f"data:{new[0].kid}": 4, f"index:{new[0].kid}": 1}
            assert await keystore.rewrap(store, j.vault, NOV_NS) == 0
        assert await opened_numbers(db_url, new) == calls
        store = open_store(db_url)
        await store.open()
        try:
            with pytest.raises(MasterKeyError):
                await keystore.open_vault(store, MASTERS, NOV_NS)  # the old key alone no longer does
        finally:
            await store.close()

    asyncio.run(run())


def test_retention_shreds_old_keys_but_those_under_a_legal_hold_and_a_hold_blocks_erasure(db_url):
    old, held, recent = "+14155550123", "+12125550199", "+13125550100"

    async def run() -> None:
        async with sealed_store(db_url) as (store, j):
            await j.ack(j.record(decision("c_old", old, NOV_NS, None), decision("c_held", held, NOV_NS, None)))
            await j.ack(j.record(decision("c_new", recent, NOV_NS + 40 * DAY_NS, None)))
            p = Privacy(Settings(retention_days=30), j)
            assert (await p.hold(held, "litigation 2026-117", NOV_NS))[1] is True
            assert (await p.hold(held, "again", NOV_NS))[1] is False
            with pytest.raises(HeldError):
                await p.erase(held, NOV_NS)
            assert await p.retain(NOV_NS + 40 * DAY_NS) == 1  # the old number's key only
            assert await p.retain(NOV_NS + 40 * DAY_NS) == 0
            assert [h["number_hash"] for h in await p.holds()] == [j.vault.blind(held)]
            assert await p.release(j.vault.blind(held), NOV_NS) is True
            assert await p.retain(NOV_NS + 40 * DAY_NS) == 1  # released: it goes too
            await books_and_chain_ok(store)
        assert await opened_numbers(db_url) == {"c_old": ERASED, "c_held": ERASED, "c_new": recent}

    asyncio.run(run())


def test_a_refused_batch_keeps_its_new_key_for_the_next_one(tmp_path):
    """A data key rides with the batch of the first record it sealed; a batch the database
    refuses (split, its bad operation dropped) still stores the keys the others need."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"

    async def run() -> None:
        store = open_store(url)
        await store.open()
        vault = await keystore.open_vault(store, MASTERS, NOV_NS)
        w = Writer(store, vault=vault)
        await w.start()
        bad: list[Record] = [AuditEvent(NOV_NS, "decision", "bad", "+14155550123", {"request": {"caller": "+14155550123"},
                                                                                     "x": 1 << 70})]
        good = w.put([decision("good", "+14155550123", NOV_NS)])
        w.put(bad)
        await w.wait(good, 5)
        await w.close()
        await store.close()
        assert (await opened_numbers(url))["good"] == "+14155550123"

    asyncio.run(run())


def test_under_a_backlog_each_key_row_is_stored_once_and_every_number_reads_back(tmp_path):
    """With a backlog the writer takes the next batch while one commits; that batch leaves out
    the key rows the committing one carries (each row written once), and a batch refused
    meanwhile is rebuilt with every key not stored, so every call still opens to its number."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    nums = [f"+1415{200 + i:03d}{i:04d}" for i in range(120)]

    async def run() -> None:
        store = open_store(url)
        await store.open()
        vault = await keystore.open_vault(store, MASTERS, NOV_NS)
        w = Writer(store, max_batch=30, vault=vault)
        stored: list[str] = []
        w.on_commit.append(lambda batch: stored.extend(r.kid for r in batch.keys))
        await w.start()
        last = 0
        for i, n in enumerate(nums):  # no await between puts: a backlog of four batches and more
            cid = f"call_{i:04d}"
            last = w.put([decision(cid, n, NOV_NS + i * NS), *billable_call(cid, "b1", "p1", 1000 + i, NOV_NS + i * NS + 90 * NS)])
            if i == 70:  # a unit the database refuses, in the middle of the backlog
                w.put([AuditEvent(NOV_NS, "decision", "bad", "+14155550123", {"request": {"caller": "+14155550123"}, "x": 1 << 70})])
        await w.wait(last, 30)
        assert w.batches > 4
        assert len(stored) == len(set(stored))  # no key row written twice
        in_table = {r[0] for r in await store.fetch("SELECT kid FROM privacy_keys")}
        assert set(stored) == in_table and len(in_table) == vault.keys_made and not vault.unsaved
        await w.close()
        await store.close()
        opened = await opened_numbers(url)
        assert {cid: opened[cid] for cid in opened if cid != "bad"} == {f"call_{i:04d}": n for i, n in enumerate(nums)}

    asyncio.run(run())
