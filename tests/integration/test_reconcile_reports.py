"""Reconciliation and the monthly reports, against both real stores: a clean ledger reconciles,
each planted discrepancy is found in its own section (and only there), live holds are in
flight, and the invoice command writes the right files with the right totals."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import pytest

from billing import postings
from billing.cli import main
from billing.postings import Entry, Leg
from billing.reconcile import reconcile
from billing.records import AccountRow, CallOutcome, HoldEvent
from billing.backends import open_store
from billing.store import Store
from billing.writer import Writer
from tests.integration.ledgerkit import DAY_NS, NOV_NS, NS, behind_triggers, billable_call, opened, unbilled_call

OCT_NS = NOV_NS - 21 * DAY_NS  # 2026-10-20
DEC_NS = NOV_NS + 22 * DAY_NS  # 2026-12-02
NOW_NS = NOV_NS + 60 * DAY_NS
GRACE_NS = 3600 * NS
ANCIENT_NS = 1_000_000_000 * NS  # 2001: in the past whatever the machine's clock says
SECTIONS = ["entries balance", "balances equal legs", "ledger sums to zero", "billable calls charged once",
            "non-billable calls not charged", "charges have a call", "refunds within charge", "holds resolved",
            "captures match charges"]


def run(coro):
    return asyncio.run(coro)


def book() -> list:
    """Two buyers and two publishers over October to December 2026."""
    c1 = postings.charge("c1", "b1", "p1", 3_000, 2_000, NOV_NS)
    return [
        AccountRow("b1", "buyer", "Acme Insurance", "digest-b1", 0, OCT_NS),
        AccountRow("b2", "buyer", "Bolt Auto", "digest-b2", 5_000, OCT_NS),
        AccountRow("p1", "publisher", "Leadgen Co", "digest-p1", 0, OCT_NS),
        AccountRow("p2", "publisher", "Callhub <&>", "digest-p2", 0, OCT_NS),
        postings.deposit("buyer:b1", 100_000, "dep-b1", OCT_NS),
        *billable_call("c-oct", "b1", "p1", 2_500, OCT_NS + 5 * DAY_NS, "auto-ca"),
        postings.deposit("buyer:b2", 50_000, "dep-b2", NOV_NS - 8 * DAY_NS),
        *billable_call("c1", "b1", "p1", 3_000, NOV_NS, "auto-ca"),
        *billable_call("c2", "b2", "p2", 1_999, NOV_NS + DAY_NS, "home-ny"),
        *unbilled_call("c3", "b1", "p1", 1_200, NOV_NS + 2 * DAY_NS, "auto-ca"),
        *billable_call("c4", "b1", "p2", 4_000, NOV_NS + 3 * DAY_NS, "auto-tx"),
        postings.refund("c1", "r1", c1, 0, 1_000, NOV_NS + 5 * DAY_NS, "wrong number"),
        postings.refund("c1", "r2", c1, 1_000, 500, NOV_NS + 6 * DAY_NS),
        postings.payout("publisher:p1", 2_000, "po-p1-nov", NOV_NS + 18 * DAY_NS),
        *billable_call("c5", "b1", "p1", 1_000, DEC_NS, "auto-ca"),
    ]


async def write_book(url: str) -> None:
    async with opened(url) as (_, writer):
        await writer.wait(writer.put(book()), 10)


async def entry_id(store: Store, reference: str) -> int:
    return (await store.fetch("SELECT id FROM entries WHERE reference = ?", reference))[0][0]


# Each plant: (what is written or done, the sections that must fail, a word the report must name).
async def _put(writer: Writer, records: list) -> None:
    await writer.wait(writer.put(records), 10)


async def _tamper_balance(store: Store, _: Writer) -> None:
    await store.execute_raw("UPDATE balances SET balance_cents = balance_cents + 1 WHERE account = 'buyer:b1'")  # type: ignore[attr-defined]


async def _drop_balance(store: Store, _: Writer) -> None:
    await store.execute_raw("DELETE FROM balances WHERE account = 'publisher:p2'")  # type: ignore[attr-defined]


async def _drop_zero_balance(store: Store, writer: Writer) -> None:
    await _put(writer, [Entry("adj-0", "deposit", (Leg("world:deposits", 0), Leg("buyer:b9", 0)), NOV_NS)])
    await store.execute_raw("DELETE FROM balances WHERE account = 'buyer:b9'")  # type: ignore[attr-defined]


async def _leg_behind_triggers(store: Store, _: Writer) -> None:
    eid = await entry_id(store, "dep-b1")
    await behind_triggers(store, "legs", f"INSERT INTO legs (entry_id, account, amount_cents) VALUES ({eid}, 'buyer:b1', 7)")


def _wrong_split() -> list:
    recs = billable_call("c-split", "b1", "p1", 1_000, NOV_NS)
    outcome = recs[3]
    return recs[:3] + [outcome._replace(payout_cents=outcome.payout_cents + 1, margin_cents=outcome.margin_cents - 1)]


PLANTS = {
    "billable_outcome_without_charge": (
        lambda s, w: _put(w, [CallOutcome("ghost", "p1", "b1", "auto-ca", "completed", True, 900, 900, 720, 180, NOV_NS, NOV_NS)]),
        {"billable calls charged once"}, "ghost"),
    "hold_never_resolved": (
        lambda s, w: _put(w, [HoldEvent("stuck", 0, "hold", "buyer:b1", 800, NOV_NS)]), {"holds resolved"}, "stuck"),
    "hold_captured_and_released": (
        lambda s, w: _put(w, [HoldEvent("c1", 0, "release", "buyer:b1", 3_000, NOV_NS)]), {"holds resolved"}, "c1"),
    "charge_of_a_non_billable_call": (
        lambda s, w: _put(w, [postings.charge("c3", "b1", "p1", 1_200, 2_000, NOV_NS + 2 * DAY_NS)]),
        {"non-billable calls not charged", "captures match charges"}, "c3"),
    "charge_split_differs_from_outcome": (
        lambda s, w: _put(w, _wrong_split()), {"billable calls charged once"}, "c-split"),
    "charge_without_outcome": (
        lambda s, w: _put(w, billable_call("c-lost", "b1", "p1", 700, NOV_NS)[:3]), {"charges have a call"}, "c-lost"),
    "refund_beyond_charge": (
        lambda s, w: _put(w, [Entry("c2:big", "refund", (Leg("buyer:b2", 2_500), Leg("publisher:p2", -2_000),
                                                         Leg("exchange:revenue", -500)), NOV_NS)]),
        {"refunds within charge"}, "c2"),
    "refund_of_an_uncharged_call": (
        lambda s, w: _put(w, [postings.refund("c3", "r1", postings.charge("c3", "b1", "p1", 1_200, 2_000, 0), 0, 100, NOV_NS)]),
        {"refunds within charge"}, "c3"),
    "capture_without_charge": (
        lambda s, w: _put(w, [HoldEvent("cap-only", 0, "hold", "buyer:b1", 300, NOV_NS),
                              HoldEvent("cap-only", 0, "capture", "buyer:b1", 300, NOV_NS)]),
        {"captures match charges"}, "cap-only"),
    "balance_altered": (_tamper_balance, {"balances equal legs", "ledger sums to zero"}, "buyer:b1"),
    "balance_row_missing": (_drop_balance, {"balances equal legs", "ledger sums to zero"}, "publisher:p2"),
    "zero_balance_row_missing": (_drop_zero_balance, {"balances equal legs"}, "buyer:b9"),
    "leg_added_behind_the_triggers": (
        _leg_behind_triggers, {"entries balance", "balances equal legs", "ledger sums to zero"}, "dep-b1"),
}


def test_a_clean_ledger_reconciles(db_url):
    async def body():
        await write_book(db_url)
        store = open_store(db_url)
        await store.open()
        try:
            report = await reconcile(store, NOW_NS, GRACE_NS)
        finally:
            await store.close()
        assert report.ok, report.text()
        assert [s.name for s in report.sections] == SECTIONS
        assert report.section("entries balance").checked == "10 entries, 27 legs"
        assert report.section("billable calls charged once").checked == "5 billable calls"
        assert report.section("holds resolved").checked == "6 holds"
        assert "RESULT: OK" in report.text()

    run(body())


@pytest.mark.parametrize("plant", PLANTS.values(), ids=PLANTS.keys())
def test_reconcile_finds_each_planted_discrepancy_in_its_section(db_url, plant):
    do, failing, word = plant

    async def body():
        await write_book(db_url)
        async with opened(db_url) as (store, writer):
            await do(store, writer)
            report = await reconcile(store, NOW_NS, GRACE_NS)
        assert not report.ok
        assert {s.name for s in report.sections if not s.ok} == failing, report.text()
        for name in failing:
            section = report.section(name)
            assert section.discrepancy_count == len(section.discrepancies) >= 1
        assert any(word in d for name in failing for d in report.section(name).discrepancies), report.text()

    run(body())


def test_live_holds_and_fresh_halves_are_in_flight_not_discrepancies(db_url):
    async def body():
        await write_book(db_url)
        async with opened(db_url) as (store, writer):
            now = NOW_NS
            await _put(writer, [
                HoldEvent("live", 0, "hold", "buyer:b1", 500, now - 60 * NS),
                CallOutcome("just-done", "p1", "b1", "auto-ca", "completed", True, 900, 900, 720, 180, now - 5 * NS, now - NS),
            ])
            report = await reconcile(store, now, GRACE_NS)
            assert report.ok, report.text()
            assert report.section("holds resolved").in_flight_count == 1
            assert "live" in report.section("holds resolved").in_flight[0]
            assert report.section("billable calls charged once").in_flight_count == 1
            # the same hold past the grace is a discrepancy
            later = await reconcile(store, now + 2 * GRACE_NS, GRACE_NS)
            assert {s.name for s in later.sections if not s.ok} == {"holds resolved", "billable calls charged once"}

    run(body())


def test_reconcile_lists_a_bounded_number_of_examples_with_the_full_count(db_url):
    async def body():
        async with opened(db_url) as (store, writer):
            await _put(writer, [HoldEvent(f"stuck-{i}", 0, "hold", "buyer:b1", 10, NOV_NS) for i in range(30)])
            report = await reconcile(store, NOW_NS, GRACE_NS, limit=5)
            holds = report.section("holds resolved")
            assert holds.discrepancy_count == 30 and len(holds.discrepancies) == 5
            assert "and 25 more" in report.text()

    run(body())


def test_reconcile_command_exits_0_when_clean_and_1_naming_the_discrepancy(db_url, capsys):
    run(write_book(db_url))
    assert main(["billing", "reconcile", "--database-url", db_url]) == 0
    assert "RESULT: OK" in capsys.readouterr().out

    async def plant():
        async with opened(db_url) as (_, writer):
            await _put(writer, [HoldEvent("stuck", 0, "hold", "buyer:b1", 800, ANCIENT_NS)])

    run(plant())
    assert main(["billing", "reconcile", "--database-url", db_url]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] holds resolved" in out and "stuck" in out and "RESULT: 1 discrepancy" in out


def test_commands_without_a_database_exit_2(tmp_path, capsys):
    missing = f"sqlite:///{tmp_path / 'nope.db'}"
    assert main(["billing", "reconcile", "--database-url", missing]) == 2
    assert main(["audit", "verify", "--database-url", missing]) == 2
    assert not (tmp_path / "nope.db").exists()
    assert main(["billing", "invoice", "--month", "2026-13", "--database-url", missing]) == 2
    assert "error" in capsys.readouterr().err


# ---------------------------------------------------------------------- invoices and payout reports
def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_invoice_command_writes_each_partys_files_with_correct_totals(db_url, tmp_path, capsys):
    run(write_book(db_url))
    out = tmp_path / "nov"
    assert main(["billing", "invoice", "--month", "2026-11", "--out", str(out), "--database-url", db_url]) == 0
    assert "2 invoice(s) and 2 payout report(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{kind}-2026-11-{pid}.{ext}" for kind, pid in [("invoice", "b1"), ("invoice", "b2"), ("payout", "p1"), ("payout", "p2")]
         for ext in ("csv", "html")] + ["summary-2026-11.csv"])

    def lines(name: str) -> tuple[int, list[dict[str, str]], int]:
        rows = read_csv(out / name)
        assert rows[0]["kind"] == "opening_balance" and rows[-1]["kind"] == "closing_balance"
        opening, closing = int(rows[0]["amount_cents"]), int(rows[-1]["amount_cents"])
        body = rows[1:-1]
        assert opening + sum(int(r["amount_cents"]) for r in body) == closing
        return opening, body, closing

    opening, body, closing = lines("invoice-2026-11-b1.csv")
    assert (opening, closing) == (97_500, 92_000)
    assert [(r["kind"], r["call_id"], r["campaign"], int(r["amount_cents"])) for r in body] == [
        ("charge", "c1", "auto-ca", -3_000), ("charge", "c4", "auto-tx", -4_000),
        ("refund", "c1", "auto-ca", 1_000), ("refund", "c1", "auto-ca", 500)]
    assert body[0]["date"] == "2026-11-10T12:00:00Z" and body[2]["memo"] == "wrong number"

    opening, body, closing = lines("invoice-2026-11-b2.csv")
    assert (opening, closing) == (0, 48_001)
    assert [(r["kind"], r["reference"], int(r["amount_cents"])) for r in body] == [("deposit", "dep-b2", 50_000), ("charge", "c2", -1_999)]

    opening, body, closing = lines("payout-2026-11-p1.csv")
    assert (opening, closing) == (2_000, 1_200)
    assert [(r["kind"], r["call_id"], int(r["amount_cents"])) for r in body] == [
        ("credit", "c1", 2_400), ("clawback", "c1", -800), ("clawback", "c1", -400), ("payout", "", -2_000)]

    opening, body, closing = lines("payout-2026-11-p2.csv")
    assert (opening, closing) == (0, 4_799)
    assert [(r["call_id"], r["campaign"], int(r["amount_cents"])) for r in body] == [("c2", "home-ny", 1_599), ("c4", "auto-tx", 3_200)]

    summary = {r["party_id"]: r for r in read_csv(out / "summary-2026-11.csv")}
    assert set(summary) == {"b1", "b2", "p1", "p2"}
    assert (summary["b1"]["charges_or_credits_cents"], summary["b1"]["refunds_or_clawbacks_cents"]) == ("-7000", "1500")
    assert (summary["p1"]["payouts_cents"], summary["p1"]["closing_cents"]) == ("-2000", "1200")

    invoice = (out / "invoice-2026-11-b1.html").read_text()
    assert "Acme Insurance" in invoice and "November 2026" in invoice
    assert "975.00" in invoice and "70.00" in invoice and "920.00" in invoice  # opening, charges, closing
    payout = (out / "payout-2026-11-p2.html").read_text()
    assert "Callhub &lt;&amp;&gt;" in payout and "Callhub <&>" not in payout
    assert "47.99" in payout  # net payable


def test_invoice_totals_agree_with_the_stores_own_statement(db_url, tmp_path):
    from billing.reports import month_bounds

    run(write_book(db_url))
    assert main(["billing", "invoice", "--month", "2026-11", "--out", str(tmp_path), "--database-url", db_url]) == 0
    lo, hi = month_bounds("2026-11")

    async def statements():
        store = open_store(db_url)
        await store.open()
        try:
            return {a: await store.statement(a, lo, hi) for a in ("buyer:b1", "buyer:b2", "publisher:p1", "publisher:p2")}
        finally:
            await store.close()

    for account, (opening, lines) in run(statements()).items():
        kind, pid = account.split(":")
        rows = read_csv(tmp_path / f"{'invoice' if kind == 'buyer' else 'payout'}-2026-11-{pid}.csv")
        assert int(rows[0]["amount_cents"]) == opening
        assert int(rows[-1]["amount_cents"]) == opening + sum(line.amount_cents for line in lines)
        assert len(rows) - 2 == len(lines)
