"""Evidence that can't be cut: ``audit verify`` names the record at fault exactly, catches ledger
rows without their audit record (and audit records without their row) in both directions, and
with a signed checkpoint (``audit checkpoint``) catches a cut or rewritten tail. Real
PostgreSQL and SQLite, the real writer, tampering done behind the triggers as a superuser."""

from __future__ import annotations

import asyncio
import json

import pytest

from billing import postings
from billing.audit import link
from billing.backends import open_store
from billing.cli import main
from billing.records import AccountRow, AuditEvent
from tests.integration.ledgerkit import NOV_NS, behind_triggers, billable_call, opened, unbilled_call

KEY = "checkpoint-key-the-database-never-sees"


def run(coro):
    return asyncio.run(coro)


def hexlit(url: str, b: bytes) -> str:
    return f"decode('{b.hex()}', 'hex')" if url.startswith("postgresql") else f"X'{b.hex()}'"


def write_events(url: str, n: int = 20) -> None:
    async def body():
        async with opened(url) as (_store, writer):
            events = [AuditEvent(NOV_NS + i, "decision", f"call-{i}", "+12125550100", {"step": i}) for i in range(n)]
            await writer.wait(writer.put(events), 10)
    run(body())


def write_money(url: str) -> None:
    async def body():
        async with opened(url) as (_store, writer):
            recs: list = [AccountRow("b1", "buyer", "Acme", "digest-b1", 0, NOV_NS),
                          AccountRow("p1", "publisher", "Calls", "digest-p1", 0, NOV_NS),
                          postings.deposit("buyer:b1", 10_000, "dep-1", NOV_NS)]
            recs += billable_call("call-1", "b1", "p1", 2_500, NOV_NS + 1) + unbilled_call("call-2", "b1", "p1", 900, NOV_NS + 2)
            await writer.wait(writer.put(recs), 10)
    run(body())


def tamper(url: str, table: str, *statements: str) -> None:
    async def body():
        store = open_store(url)
        await store.open()
        try:
            await behind_triggers(store, table, *statements)
        finally:
            await store.close()
    run(body())


def rows(url: str, sql: str) -> list[tuple]:
    async def body():
        store = open_store(url)
        await store.open()
        try:
            return await store.fetch(sql)
        finally:
            await store.close()
    return run(body())


def rehash(url: str, first: int, last: int, new_body: str) -> list[str]:
    """Statements that give record ``first`` a new body and re-hash it and every record up to
    ``last`` so each links to the one before (a careful forger's edit)."""
    got = rows(url, f"SELECT seq, at_ns, kind, call_id, number, body, prev_hash FROM audit WHERE seq >= {first} "
                    f"AND seq <= {last} ORDER BY seq")
    prev = bytes(got[0][6])
    out = []
    for seq, at, kind, call_id, number, body, _ in got:
        body = new_body if seq == first else body
        h = link(prev, seq, at, kind, call_id, number, body)
        out.append(f"UPDATE audit SET body = '{body}', prev_hash = {hexlit(url, prev)}, hash = {hexlit(url, h)} WHERE seq = {seq}")
        prev = h
    return out


def verify(url: str, *extra: str) -> int:
    return main(["audit", "verify", "--database-url", url, *extra])


# ---------------------------------------------------------------------- naming the record at fault
@pytest.mark.parametrize("page", [3, 7, 100])
def test_a_record_edited_and_rehashed_is_named_itself_not_the_one_after(db_url, page, capsys):
    write_events(db_url)
    tamper(db_url, "audit", *rehash(db_url, 7, 7, '{"step":999}'))
    assert verify(db_url, "--page", str(page)) == 1
    out = capsys.readouterr().out
    assert "BROKEN at record 7:" in out and "records 1..6 verify" in out, out


def test_a_record_whose_link_alone_was_edited_is_named_itself(db_url, capsys):
    write_events(db_url)
    tamper(db_url, "audit", f"UPDATE audit SET prev_hash = {hexlit(db_url, bytes(32))} WHERE seq = 9")
    assert verify(db_url) == 1
    out = capsys.readouterr().out
    assert "BROKEN at record 9:" in out and "records 1..8 verify" in out, out


# ---------------------------------------------------------------------- checkpoints
def checkpoint(url: str, path, monkeypatch) -> int:
    monkeypatch.setenv("EXCHANGE_CHECKPOINT_KEY", KEY)
    return main(["audit", "checkpoint", "--database-url", url, "--out", str(path)])


@pytest.mark.parametrize("cut", [1, 10])
def test_a_cut_tail_is_caught_by_the_signed_checkpoint(db_url, cut, tmp_path, monkeypatch, capsys):
    write_events(db_url)
    cp = tmp_path / "checkpoints.jsonl"
    assert checkpoint(db_url, cp, monkeypatch) == 0
    line = json.loads(cp.read_text().splitlines()[-1])
    assert line["seq"] == 20 and len(line["hash"]) == 64 and "mac" in line
    assert verify(db_url, "--checkpoint", str(cp)) == 0
    capsys.readouterr()
    tamper(db_url, "audit", f"DELETE FROM audit WHERE seq > {20 - cut}")
    assert verify(db_url) == 0  # the chain alone cannot tell a cut tail from a short one
    capsys.readouterr()
    assert verify(db_url, "--checkpoint", str(cp)) == 1
    out = capsys.readouterr().out
    assert "CUT: the checkpoint" in out and "record 20" in out and f"ends at record {20 - cut}" in out, out


def test_a_rewritten_tail_is_caught_by_the_signed_checkpoint(db_url, tmp_path, monkeypatch, capsys):
    write_events(db_url)
    cp = tmp_path / "cp.jsonl"
    assert checkpoint(db_url, cp, monkeypatch) == 0
    tamper(db_url, "audit", *rehash(db_url, 17, 20, '{"step":-1}'))
    assert verify(db_url) == 0  # re-hashed to the end: consistent in itself
    capsys.readouterr()
    assert verify(db_url, "--checkpoint", str(cp)) == 1
    out = capsys.readouterr().out
    assert "REWRITTEN: record 20" in out, out


def test_a_forged_or_unsigned_checkpoint_is_refused(db_url, tmp_path, monkeypatch, capsys):
    write_events(db_url)
    cp = tmp_path / "cp.jsonl"
    assert checkpoint(db_url, cp, monkeypatch) == 0
    forged = json.loads(cp.read_text())
    forged["seq"] = 5
    cp.write_text(json.dumps(forged) + "\n")
    assert verify(db_url, "--checkpoint", str(cp)) == 1
    assert "not signed with the checkpoint key" in capsys.readouterr().out
    monkeypatch.delenv("EXCHANGE_CHECKPOINT_KEY")
    assert verify(db_url, "--checkpoint", str(cp)) == 2  # no key: nothing to check it with
    assert main(["audit", "checkpoint", "--database-url", db_url, "--out", str(cp)]) == 2


def test_the_checkpoint_key_may_come_from_a_file(db_url, tmp_path, monkeypatch):
    write_events(db_url, 3)
    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    monkeypatch.delenv("EXCHANGE_CHECKPOINT_KEY", raising=False)
    monkeypatch.setenv("EXCHANGE_CHECKPOINT_KEY_FILE", str(key))
    monkeypatch.setenv("EXCHANGE_CHECKPOINT_FILE", str(tmp_path / "cp.jsonl"))
    assert main(["audit", "checkpoint", "--database-url", db_url]) == 0
    assert verify(db_url, "--checkpoint", str(tmp_path / "cp.jsonl")) == 0


# ---------------------------------------------------------------------- ledger rows against the audit trail
def test_every_ledger_row_has_its_audit_record_and_verify_says_so(db_url, capsys):
    write_money(db_url)
    kinds = {k for (k,) in rows(db_url, "SELECT DISTINCT kind FROM audit")}
    assert {"account", "entry", "hold", "capture", "release", "outcome"} <= kinds
    assert verify(db_url) == 0
    out = capsys.readouterr().out
    assert "cross-checked" in out and "0 discrepancies" in out, out


def forged_deposit(url: str) -> list[str]:
    if url.startswith("postgresql"):
        return ["INSERT INTO entries (id, reference, kind, at_ns, memo) VALUES (9, 'forged', 'deposit', 1, ''); "
                "INSERT INTO legs VALUES (9, 'buyer:b1', 1000000), (9, 'world:deposits', -1000000); "
                "UPDATE balances SET balance_cents = balance_cents + 1000000 WHERE account = 'buyer:b1'; "
                "UPDATE balances SET balance_cents = balance_cents - 1000000 WHERE account = 'world:deposits'"]
    return ["BEGIN", "INSERT INTO legs VALUES (999, 'buyer:b1', 1000000), (999, 'world:deposits', -1000000)",
            "INSERT INTO entries VALUES (999, 'forged', 'deposit', 1, '')",
            "UPDATE balances SET balance_cents = balance_cents + 1000000 WHERE account = 'buyer:b1'",
            "UPDATE balances SET balance_cents = balance_cents - 1000000 WHERE account = 'world:deposits'", "COMMIT"]


def test_a_forged_balanced_deposit_is_caught(db_url, capsys):
    write_money(db_url)
    assert main(["billing", "reconcile", "--database-url", db_url]) == 0
    tamper(db_url, "balances", *forged_deposit(db_url))  # balances has no trigger; entries' and legs' stay on
    assert main(["billing", "reconcile", "--database-url", db_url]) == 0  # balanced, and balances agree with legs
    capsys.readouterr()
    assert verify(db_url) == 1
    out = capsys.readouterr().out
    assert "deposit entry 'forged'" in out and "no audit record" in out, out


TAMPERED_ROWS = {
    "hold_amount": ("holds", "UPDATE holds SET amount_cents = 1 WHERE call_id = 'call-2' AND kind = 'hold'", "hold of call 'call-2'"),
    "outcome_price": ("call_outcomes", "UPDATE call_outcomes SET price_cents = 1 WHERE call_id = 'call-1'", "outcome of call 'call-1'"),
    "account_key": ("accounts", "UPDATE accounts SET key_digest = 'attacker' WHERE id = 'b1'", "account 'b1'"),
    "hold_deleted": ("holds", "DELETE FROM holds WHERE call_id = 'call-2' AND kind = 'release'", "release of call 'call-2'"),
    "leg_moved": ("legs", "UPDATE legs SET account = 'buyer:b2' WHERE account = 'buyer:b1' AND amount_cents = 10000", "deposit entry 'dep-1'"),
}


@pytest.mark.parametrize("case", TAMPERED_ROWS)
def test_a_ledger_row_changed_or_deleted_behind_the_triggers_is_named(db_url, case, capsys):
    table, sql, named = TAMPERED_ROWS[case]
    write_money(db_url)
    tamper(db_url, table, sql)
    capsys.readouterr()
    assert verify(db_url) == 1
    out = capsys.readouterr().out
    assert named in out and "audit record" in out, out


def test_an_audit_record_whose_row_is_gone_is_named_with_its_seq(db_url, capsys):
    write_money(db_url)
    (seq,) = rows(db_url, "SELECT seq FROM audit WHERE kind = 'outcome' AND call_id = 'call-1'")[0]
    tamper(db_url, "call_outcomes", "DELETE FROM call_outcomes WHERE call_id = 'call-1'")
    capsys.readouterr()
    assert verify(db_url) == 1
    out = capsys.readouterr().out
    assert f"audit record {seq}" in out and "outcome of call 'call-1'" in out and "no such row" in out, out
