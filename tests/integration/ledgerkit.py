"""Helpers for the store contract tests: opening a store and writer, realistic records, raw
access behind the append-only triggers (as a superuser would), table snapshots."""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

from billing import postings
from billing.records import CallOutcome, HoldEvent, Record
from billing.backends import open_store
from billing.store import Store
from billing.writer import Writer

NS = 1_000_000_000
TAKE_BPS = 2_000
# 2026-11-10 12:00 UTC
NOV_NS = 1_794_312_000 * NS
DAY_NS = 86_400 * NS
TABLES = ("entries", "legs", "balances", "holds", "call_outcomes", "accounts", "audit")


@contextlib.asynccontextmanager
async def opened(url: str, **writer_kw: object) -> AsyncIterator[tuple[Store, Writer]]:
    store = open_store(url)
    await store.open()
    writer = Writer(store, **writer_kw)  # type: ignore[arg-type]
    try:
        await writer.start()
        yield store, writer
    finally:
        await writer.close(timeout_s=5)
        await store.close()


def billable_call(call_id: str, buyer: str, publisher: str, price: int, at_ns: int, campaign: str = "camp",
                  take_bps: int = TAKE_BPS) -> list[Record]:
    """What the exchange writes for a billable call: hold, charge, capture, outcome."""
    entry = postings.charge(call_id, buyer, publisher, price, take_bps, at_ns)
    payout, margin = entry.legs[1].amount_cents, entry.legs[2].amount_cents
    account = postings.buyer_account(buyer)
    return [
        HoldEvent(call_id, 0, "hold", account, price, at_ns - 60 * NS),
        entry,
        HoldEvent(call_id, 0, "capture", account, price, at_ns),
        CallOutcome(call_id, publisher, buyer, campaign, "completed", True, price, price, payout, margin,
                    at_ns - 120 * NS, at_ns),
    ]


def unbilled_call(call_id: str, buyer: str, publisher: str, price: int, at_ns: int, campaign: str = "camp") -> list[Record]:
    """A routed call that failed: hold, release, outcome (not billable)."""
    account = postings.buyer_account(buyer)
    return [
        HoldEvent(call_id, 0, "hold", account, price, at_ns - 60 * NS),
        HoldEvent(call_id, 0, "release", account, price, at_ns),
        CallOutcome(call_id, publisher, buyer, campaign, "failed", False, price, 0, 0, 0, at_ns - 120 * NS, at_ns),
    ]


async def count(store: Store, table: str) -> int:
    return int((await store.fetch(f"SELECT count(*) FROM {table}"))[0][0])


async def snapshot(store: Store) -> dict[str, list[tuple]]:
    """Every row of every table, in a stable order (bytes normalised)."""
    out = {}
    for t in TABLES:
        rows = await store.fetch(f"SELECT * FROM {t}")
        out[t] = sorted(tuple(bytes(v) if isinstance(v, (bytes, memoryview)) else v for v in r) for r in rows)
    return out


async def balances(store: Store) -> dict[str, int]:
    return {a: int(b) for a, b in await store.fetch("SELECT account, balance_cents FROM balances")}


def expected_balances(entries: list[postings.Entry]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in entries:
        for account, amount in e.legs:
            out[account] = out.get(account, 0) + amount
    return out


async def behind_triggers(store: Store, table: str, *statements: str) -> None:
    """Run ``statements`` on ``table`` with its triggers off, as a superuser going around them."""
    if store.backend == "postgres":
        await store.execute_raw(f"ALTER TABLE {table} DISABLE TRIGGER USER; {'; '.join(statements)}; "
                                f"ALTER TABLE {table} ENABLE TRIGGER USER")  # type: ignore[attr-defined]
        return
    triggers = await store.fetch("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?", table)
    for name, _ in triggers:
        await store.execute_raw(f"DROP TRIGGER {name}")  # type: ignore[attr-defined]
    try:
        for sql in statements:
            await store.execute_raw(sql)  # type: ignore[attr-defined]
    finally:
        for _, sql in triggers:
            await store.execute_raw(sql)  # type: ignore[attr-defined]
