"""The durable ledger end to end: a real server on SQLite and on PostgreSQL, real clients.

Money moved over HTTP is committed before it is acknowledged, survives a restart, shows on
statements and on the hash-chained audit trail, and bad money requests move nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from exchange.messages import Campaign
from tests.e2e.conftest import ROOT, market, route_calls, start_server, stop_server
from tests.e2e.test_exchange_e2e import balance
from tests.e2e.wsclient import Buyer
from tests.integration.conftest import pg_schema_url

VERT = "e2e_ledger"


@pytest.fixture(params=["sqlite", "postgres"], scope="module")
def database_url(request):
    if request.param == "sqlite":
        yield f"sqlite:///{tempfile.mkdtemp(prefix='dce-ledger-')}/ledger.db"
        return
    yield from pg_schema_url("e2e")


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EXCHANGE_DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "exchange", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_money_is_durable_refundable_audited_and_survives_a_restart(database_url):
    server = start_server({"EXCHANGE_DATABASE_URL": database_url})
    try:
        m = market(server, "ledger", VERT, 4000, 50_000)
        buyer_id, buyer_key, pub_id, b, auth = m.buyer_id, m.buyer_key, m.publisher_id, m.buyer, m.auth
        calls = route_calls(server, m, 3, VERT, "IL", "+1312555")
        ev = lambda c: f"/v1/calls/{c}/events"  # noqa: E731
        for c, duration in zip(calls, (90, 90, 5)):  # two billable, one short
            r = server.http.post(ev(c), json={"event": "completed", "duration_s": duration}, headers={**auth, "Idempotency-Key": f"done-{c}"})
            assert r.status_code == 200, r.text
        assert balance(server, buyer_id) == 50_000 - 8000
        admin = server.admin

        # refunds: partial, then the rest; over the charge, unbilled and unknown calls are refused
        r = server.http.post(f"/v1/calls/{calls[0]}/refund", json={"amount_cents": 1000, "reference": "r1", "reason": "dispute"}, headers=admin)
        assert r.status_code == 201, r.text
        assert r.json()["refund_cents"] == 1000 and r.json()["refunded_total_cents"] == 1000
        assert sum(leg["amount_cents"] for leg in r.json()["legs"]) == 0
        again = server.http.post(f"/v1/calls/{calls[0]}/refund", json={"amount_cents": 1000, "reference": "r1"}, headers=admin)
        assert again.status_code == 200 and again.json()["refunded_total_cents"] == 1000  # a replay moves nothing
        over = server.http.post(f"/v1/calls/{calls[0]}/refund", json={"amount_cents": 3001, "reference": "r2"}, headers=admin)
        assert over.status_code == 422 and over.json()["error"]["code"] == "refund_exceeds_charge"
        conflict = server.http.post(f"/v1/calls/{calls[0]}/refund", json={"amount_cents": 5, "reference": "r1"}, headers=admin)
        assert conflict.status_code == 409
        rest = server.http.post(f"/v1/calls/{calls[0]}/refund", json={"reference": "r3"}, headers=admin)
        assert rest.status_code == 201 and rest.json()["refund_cents"] == 3000
        unbilled = server.http.post(f"/v1/calls/{calls[2]}/refund", json={"reference": "x"}, headers=admin)
        assert unbilled.status_code == 409 and unbilled.json()["error"]["code"] == "call_not_billed"
        unknown = server.http.post("/v1/calls/call_nope/refund", json={"reference": "x"}, headers=admin)
        assert unknown.status_code == 404
        assert server.http.post(f"/v1/calls/{calls[1]}/refund", json={"reference": "x"}, headers=auth).status_code == 403
        assert balance(server, buyer_id) == 50_000 - 4000

        # bad money input moves nothing
        zero = server.http.post(f"/v1/accounts/{buyer_id}/deposits", json={"amount_cents": 0, "reference": "z"}, headers=admin)
        assert zero.status_code == 422
        dup = server.http.post(f"/v1/accounts/{buyer_id}/deposits", json={"amount_cents": 7, "reference": "init-ledger-buyer"}, headers=admin)
        assert dup.status_code == 409
        assert server.http.post(ev("call_nope"), json={"event": "completed", "duration_s": 90}, headers={**auth, "Idempotency-Key": "k"}).status_code == 404
        assert balance(server, buyer_id) == 50_000 - 4000

        # payouts: never more than the publisher is owed
        owed = server.http.get(f"/v1/accounts/{pub_id}/balance", headers=admin).json()["balance_cents"]
        assert owed == 3200  # one call's payout kept: 2 x 3200 earned, 3200 clawed back by the refunds
        too_much = server.http.post(f"/v1/accounts/{pub_id}/payouts", json={"amount_cents": owed + 1, "reference": "p0"}, headers=admin)
        assert too_much.status_code == 422
        paid = server.http.post(f"/v1/accounts/{pub_id}/payouts", json={"amount_cents": owed, "reference": "p1"}, headers=admin)
        assert paid.status_code == 201 and paid.json()["balance_cents"] == 0

        # the statement comes from the durable store
        st = server.http.get(f"/v1/accounts/{buyer_id}/statement", headers={"Authorization": f"Bearer {buyer_key}"}).json()
        assert [ln["kind"] for ln in st["lines"]] == ["deposit", "charge", "charge", "refund", "refund"]
        assert st["closing_balance_cents"] == 46_000

        # the audit trail: the decision with its evidence, the money and the events
        audit = server.http.get("/v1/audit", params={"call_id": calls[0]}, headers=admin).json()["records"]
        kinds = [r["kind"] for r in audit]
        assert kinds[0] == "decision" and "event" in kinds and kinds.count("entry") == 3  # charge and two refunds
        decision = audit[0]["body"]
        assert decision["decision"]["decision"] == "routed" and decision["routes"][0]["buyer"] == buyer_id
        assert decision["bids"][0]["bid_cents"] == 4000 and "gate" in decision["compliance"]
        assert audit[0]["number"] == "+13125550000"
        by_number = server.http.get("/v1/audit", params={"number": "+13125550000"}, headers=admin).json()["records"]
        assert [r["call_id"] for r in by_number] == [calls[0]]
        assert server.http.get("/v1/audit", params={"call_id": calls[0]}, headers=auth).status_code == 403
        b.close()
    finally:
        stop_server(server)

    # the offline tools agree: the chain verifies and the books reconcile
    verify = cli(database_url, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    rec = cli(database_url, "billing", "reconcile")
    assert rec.returncode == 0, rec.stdout + rec.stderr

    # a restart keeps accounts, keys and balances
    again = start_server({"EXCHANGE_DATABASE_URL": database_url})
    try:
        assert balance(again, buyer_id) == 46_000
        r = again.http.get(f"/v1/accounts/{buyer_id}/balance", headers={"Authorization": f"Bearer {buyer_key}"})
        assert r.status_code == 200 and r.json()["available_cents"] == 46_000
        replay = again.http.post(f"/v1/accounts/{buyer_id}/deposits", json={"amount_cents": 50_000, "reference": "init-ledger-buyer"}, headers=again.admin)
        assert replay.status_code == 200 and balance(again, buyer_id) == 46_000  # the deposit's replay is still a no-op

        # ... and the repeat-caller index: the buyer comes back with a 30-day dedupe window; the
        # caller billed to it before the restart goes elsewhere, the short (unbilled) one does not
        b2 = Buyer(again.ws_url, buyer_key)
        b2.request(lambda s: Campaign(id="ledger-c", vertical=VERT, bid_cents=4000, destination="+18005550199",
                                      min_duration_s=60, dedupe_days=30, seq=s))
        auth = {"Authorization": f"Bearer {m.publisher_key}"}
        for caller, routed in (("+13125550001", False), ("+13125550002", True), ("+13125550003", True)):
            d = again.http.post("/v1/calls", json={"caller": caller, "vertical": VERT, "state": "IL"}, headers=auth).json()
            assert (d["decision"] == "routed") is routed, (caller, d)
        b2.close()
    finally:
        stop_server(again)
