"""Consumer privacy end to end, on SQLite and PostgreSQL: a real exchange, real calls, an
opt-out, an erasure through the API; then the raw database and the compliance journal hold
no number, the audit chain verifies and the books reconcile, a restart recovers the call in
flight from its sealed records and still honours the erased number's opt-out; a wrong master
key refuses to start; the embedded default generates its key next to the database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, market, start_server, stop_server
from tests.integration.conftest import pg_schema_url

VERT = "e2e_privacy"
VICTIM, OTHER, NEVER, CONTROL = "+13125550123", "+13125550188", "+19175550000", "+19175550001"
OTHER_KEY = "b3RoZXItbWFzdGVyLWtleS0zMi1ieXRlcy1sb25nISE="


@pytest.fixture(params=["sqlite", "postgres"], scope="module")
def database_url(request):
    if request.param == "sqlite":
        yield f"sqlite:///{tempfile.mkdtemp(prefix='dce-privacy-')}/ledger.db"
        return
    yield from pg_schema_url("e2epriv")


def cli(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exchange", *args], cwd=ROOT, env={**os.environ, "EXCHANGE_DATABASE_URL": database_url, **env},
                          capture_output=True, text=True, timeout=120)


def digits_anywhere(data: bytes, e164: str) -> list[bytes]:
    from tests.integration.test_privacy_store import encodings

    return [e for e in encodings(e164) if e in data]


def database_bytes(database_url: str) -> bytes:
    if database_url.startswith("sqlite:///"):
        path = database_url[len("sqlite:///"):]
        return b"".join(Path(p).read_bytes() for p in (path, path + "-wal") if os.path.exists(p))
    import asyncio

    from billing.backends import open_store
    from tests.integration.test_privacy_store import raw_bytes

    async def dump() -> bytes:
        store = open_store(database_url)
        await store.open()
        try:
            return await raw_bytes(store, database_url)
        finally:
            await store.close()

    return asyncio.run(dump())


def outbound_reason(server, auth: dict[str, str], callee: str) -> str:
    """The gate's reason for an outbound call to ``callee`` (an opt-out: ``internal_dnc``,
    checked before the lists this exchange has none of)."""
    d = server.http.post("/v1/calls", json={"caller": "+13125550999", "callee": callee, "direction": "outbound",
                                            "vertical": VERT, "state": "IL"}, headers=auth).json()
    assert d["decision"] == "rejected", d
    return d["reason"]


def test_erasure_through_the_api_leaves_nothing_readable_and_keeps_audit_books_and_opt_out(database_url, tmp_path):
    env = {"EXCHANGE_DATABASE_URL": database_url, "EXCHANGE_COMPLIANCE_DIR": str(tmp_path / "compliance")}
    server = start_server(env)
    admin = server.admin
    try:
        m = market(server, "priv", VERT, 4000, 50_000)
        call = lambda n: server.http.post("/v1/calls", json={"caller": n, "vertical": VERT, "state": "IL"}, headers=m.auth).json()  # noqa: E731
        out = lambda n, s=server: outbound_reason(s, m.auth, n)  # noqa: E731
        done = call(VICTIM)
        assert done["decision"] == "routed", done
        r = server.http.post(f"/v1/calls/{done['call_id']}/events", json={"event": "completed", "duration_s": 90},
                             headers={**m.auth, "Idempotency-Key": "done-1"})
        assert r.status_code == 200 and r.json()["billable"], r.text
        flight = call(OTHER)  # left in flight across the restart
        assert flight["decision"] == "routed", flight
        assert server.http.post("/v1/suppressions", json={"number": VICTIM, "scope": "exchange"}, headers=admin).status_code == 201
        assert out(VICTIM) == "internal_dnc" and out(CONTROL) != "internal_dnc"  # (the control: any other reason)
        consent = server.http.post("/v1/consents", json={
            "token": "tok-priv-1", "phone": VICTIM, "sellers": [m.buyer_id], "created_at": "2026-11-01T00:00:00Z"}, headers=admin)
        assert consent.status_code == 201, consent.text
        seen = server.http.get("/v1/audit", params={"number": VICTIM}, headers=admin).json()["records"]
        assert seen[0]["kind"] == "decision" and seen[0]["number"] == VICTIM and seen[0]["number_hash"].startswith("h1:")

        # bad input and the operator-only rule
        bad = server.http.post("/v1/privacy/erasures", json={"number": "12"}, headers=admin)
        assert bad.status_code == 422 and bad.json()["error"]["path"] == "$.number"
        assert server.http.post("/v1/privacy/erasures", json={"number": VICTIM}, headers=m.auth).status_code == 403

        # a legal hold blocks erasure until released
        hold = server.http.post("/v1/privacy/holds", json={"number": VICTIM, "reason": "case 42"}, headers=admin)
        assert hold.status_code == 201, hold.text
        refused = server.http.post("/v1/privacy/erasures", json={"number": VICTIM}, headers=admin)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "legal_hold"
        assert [h["number_hash"] for h in server.http.get("/v1/privacy/holds", headers=admin).json()["holds"]] == [hold.json()["number_hash"]]
        assert server.http.delete(f"/v1/privacy/holds/{hold.json()['number_hash']}", headers=admin).status_code == 200

        erased = server.http.post("/v1/privacy/erasures", json={"number": VICTIM}, headers=admin)
        assert erased.status_code == 200 and erased.json()["keys_destroyed"] >= 1, erased.text
        never = server.http.post("/v1/privacy/erasures", json={"number": NEVER}, headers=admin)
        assert never.status_code == 200 and never.json()["keys_destroyed"] == 0

        # GET answers show it erased; the opt-out still holds
        view = server.http.get(f"/v1/calls/{done['call_id']}", headers=admin).json()
        assert view["request"]["caller"] == "erased"
        buyer_view = server.http.get(f"/v1/calls/{done['call_id']}", headers={"Authorization": f"Bearer {m.buyer_key}"}).json()
        assert buyer_view["caller"] == "erased"
        trail = server.http.get("/v1/audit", params={"number": VICTIM}, headers=admin).json()["records"]
        assert [r["kind"] for r in trail] == ["decision", "decision", "legal_hold", "erasure"]  # inbound, outbound, hold, erasure
        assert all(r["number"] == "erased" for r in trail if r["kind"] == "decision")
        assert all(r["number_hash"] == erased.json()["number_hash"] for r in trail)
        assert "+1312555012" not in str(trail)
        assert out(VICTIM) == "internal_dnc"
        m.buyer.close()
    finally:
        stop_server(server)

    raw = database_bytes(database_url)
    journal = (tmp_path / "compliance" / "journal.jsonl").read_bytes()
    for n in (VICTIM, OTHER):
        assert not digits_anywhere(raw, n), n
        assert not digits_anywhere(journal, n), n
    verify = cli(database_url, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    rec = cli(database_url, "billing", "reconcile")
    assert rec.returncode == 0, rec.stdout + rec.stderr

    again = start_server(env)
    try:
        # the call in flight came back from its sealed decision and completes exactly once
        r = again.http.post(f"/v1/calls/{flight['call_id']}/events", json={"event": "completed", "duration_s": 90},
                            headers={**m.auth, "Idempotency-Key": "done-2"})
        assert r.status_code == 200 and r.json()["billable"], r.text
        assert again.http.get(f"/v1/calls/{flight['call_id']}", headers=again.admin).json()["request"]["caller"] == OTHER
        # the erased number's opt-out is replayed from the journal by its blind index
        assert outbound_reason(again, m.auth, VICTIM) == "internal_dnc"
        assert outbound_reason(again, m.auth, CONTROL) != "internal_dnc"
        trail = again.http.get("/v1/audit", params={"number": VICTIM}, headers=again.admin).json()["records"]
        assert trail[0]["kind"] == "decision" and trail[0]["number"] == "erased"
    finally:
        stop_server(again)
    assert cli(database_url, "audit", "verify").returncode == 0

    # a wrong master key is a refusal to start, saying why
    with pytest.raises(RuntimeError, match="master key"):
        start_server({**env, "EXCHANGE_MASTER_KEY": OTHER_KEY})
    wrong = cli(database_url, "privacy", "keys", EXCHANGE_MASTER_KEY=OTHER_KEY)
    assert wrong.returncode == 1 and "master key" in wrong.stderr


def test_the_embedded_default_generates_its_key_next_to_the_database_and_refuses_without_it(tmp_path):
    db = tmp_path / "ledger.db"
    env = {"EXCHANGE_DATABASE_URL": f"sqlite:///{db}", "EXCHANGE_MASTER_KEY": ""}
    server = start_server(env)
    try:
        assert "master_key_generated" in server.log()
        m = market(server, "gen", VERT, 4000, 50_000)
        assert server.http.post("/v1/calls", json={"caller": VICTIM, "vertical": VERT, "state": "IL"}, headers=m.auth).json()["decision"] == "routed"
        m.buyer.close()
    finally:
        stop_server(server)
    key = Path(str(db) + ".master-key")
    assert key.exists() and oct(key.stat().st_mode & 0o777) == "0o600"
    restarted = start_server(env)  # the same key is found again
    try:  # rotation while running: the new key first in the file, the old one after it
        old = key.read_text().strip()
        key.write_text(f"{OTHER_KEY}\n{old}\n")
        r = restarted.http.post("/v1/privacy/key-rotations", headers=restarted.admin)
        assert r.status_code == 200 and r.json()["rewrapped"] >= 2, r.text  # the index key and the caller's data key
        assert set(r.json()["keys"]) == {f"data:{r.json()['master_key_id']}", f"index:{r.json()['master_key_id']}"}
        assert restarted.http.get("/v1/audit", params={"number": VICTIM}, headers=restarted.admin).json()["records"][0]["number"] == VICTIM
    finally:
        stop_server(restarted)
    key.write_text(OTHER_KEY + "\n")  # the old key dropped: the new one alone reads everything
    rotated = start_server(env)
    try:
        assert rotated.http.get("/v1/audit", params={"number": VICTIM}, headers=rotated.admin).json()["records"][0]["number"] == VICTIM
    finally:
        stop_server(rotated)
    key.rename(tmp_path / "elsewhere.key")
    with pytest.raises(RuntimeError, match="no master key is configured"):
        start_server(env)
    back = start_server({**env, "EXCHANGE_MASTER_KEY_FILE": str(tmp_path / "elsewhere.key")})
    stop_server(back)


def test_a_journal_written_in_clear_is_read_and_one_sealed_for_another_database_refuses_the_start(tmp_path):
    """Migration: opt-outs journalled in clear before numbers were sealed still apply; a journal
    paired with another database keeps its opt-outs by blind index, and one blinded under another
    master key is a refusal to start, not dropped opt-outs."""
    data = tmp_path / "compliance"
    data.mkdir()
    line = {"t": "suppression", "number": VICTIM, "scope": "exchange", "added_ns": 1, "source": "old"}
    (data / "journal.jsonl").write_text(json.dumps(line) + "\n")
    env = {"EXCHANGE_COMPLIANCE_DIR": str(data), "EXCHANGE_DATABASE_URL": f"sqlite:///{tmp_path / 'one.db'}"}
    server = start_server(env)
    try:
        _, key = server.account("publisher", "mig-p")
        auth = {"Authorization": f"Bearer {key}"}
        assert outbound_reason(server, auth, VICTIM) == "internal_dnc"
        assert server.http.post("/v1/suppressions", json={"number": OTHER}, headers=server.admin).status_code == 201
    finally:
        stop_server(server)
    assert not digits_anywhere((data / "journal.jsonl").read_bytes().split(b"\n", 1)[1], OTHER)
    # another database, the same master key: the sealed number cannot be opened there (its key is
    # in the first database) but the opt-out still holds by its blind index
    two = start_server({**env, "EXCHANGE_DATABASE_URL": f"sqlite:///{tmp_path / 'two.db'}"})
    try:
        _, key = two.account("publisher", "mig-p2")
        assert outbound_reason(two, {"Authorization": f"Bearer {key}"}, OTHER) == "internal_dnc"
    finally:
        stop_server(two)
    # another master key: the journal cannot be matched at all, a refusal to start
    with pytest.raises(RuntimeError, match="another index key"):
        start_server({**env, "EXCHANGE_DATABASE_URL": f"sqlite:///{tmp_path / 'three.db'}", "EXCHANGE_MASTER_KEY": OTHER_KEY})


def test_the_privacy_cli_erases_holds_retains_and_rotates_on_the_database(tmp_path):
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    server = start_server({"EXCHANGE_DATABASE_URL": db})
    try:
        m = market(server, "cli", VERT, 4000, 50_000)
        for n in (VICTIM, OTHER):
            assert server.http.post("/v1/calls", json={"caller": n, "vertical": VERT, "state": "IL"}, headers=m.auth).json()["decision"] == "routed"
        m.buyer.close()
    finally:
        stop_server(server)
    run = lambda *a, **env: cli(db, "privacy", *a, **env)  # noqa: E731
    held = run("hold", OTHER, "--reason", "subpoena")
    assert held.returncode == 0 and json.loads(held.stdout)["created"] is True, held.stderr
    refused = run("erase", OTHER)
    assert refused.returncode == 1 and "legal hold" in refused.stderr
    erased = run("erase", VICTIM)
    assert erased.returncode == 0 and json.loads(erased.stdout)["keys_destroyed"] >= 1, erased.stderr
    assert json.loads(run("erase", NEVER).stdout)["keys_destroyed"] == 0
    assert run("erase", "not-a-number").returncode == 2
    assert [h["reason"] for h in json.loads(run("holds").stdout)["holds"]] == ["subpoena"]
    swept = run("retention", "--days", "0")
    assert swept.returncode == 2  # no retention asked for
    new = "bmV3LW1hc3Rlci1rZXktMzItYnl0ZXMtbG9uZy4uLi4="
    rotated = run("rotate-key", EXCHANGE_MASTER_KEY=f"{new},{os.environ['EXCHANGE_MASTER_KEY']}")
    assert rotated.returncode == 0 and json.loads(rotated.stdout)["rewrapped"] >= 2, rotated.stderr
    assert run("keys").returncode == 1  # the old key alone no longer opens the database
    assert json.loads(run("keys", EXCHANGE_MASTER_KEY=new).stdout)["keys"]
    assert cli(db, "audit", "verify").returncode == 0
    assert cli(db, "billing", "reconcile").returncode == 0
    again = start_server({"EXCHANGE_DATABASE_URL": db, "EXCHANGE_MASTER_KEY": new})
    try:
        trail = again.http.get("/v1/audit", params={"number": VICTIM}, headers=again.admin).json()["records"]
        assert [r["kind"] for r in trail] == ["decision", "erasure"] and trail[0]["number"] == "erased"
        kept = again.http.get("/v1/audit", params={"number": OTHER}, headers=again.admin).json()["records"]
        assert kept[0]["number"] == OTHER
    finally:
        stop_server(again)
