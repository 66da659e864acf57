"""A record PostgreSQL cannot store (a NUL byte in an account name, a deposit reference or a
refund reason) is a clear 4xx for that request alone; the ledger writer keeps running, every
later request succeeds, and the books and the audit trail still verify (it used to stop the
writer: 503 ledger_stopped for everyone until a restart)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import market, route_calls, start_server, stop_server
from tests.e2e.test_exchange_e2e import balance
from tests.e2e.test_ledger_e2e import cli
from tests.integration.conftest import pg_schema_url

VERT = "e2e_poison"


@pytest.fixture
def pg_database_url():
    yield from pg_schema_url("e2e_poison")


def test_a_nul_byte_is_refused_to_its_request_alone_and_the_ledger_goes_on(pg_database_url):
    server = start_server({"EXCHANGE_DATABASE_URL": pg_database_url})
    try:
        admin = server.admin
        bad = server.http.post("/v1/accounts", json={"kind": "publisher", "name": "Acme\u0000Calls"}, headers=admin)
        # refused at decode now (issue 13 D1), before the store; the writer's own refusal of a record
        # the database will not take is tested against both stores in test_poison_records
        assert bad.status_code == 422, bad.text
        assert bad.json()["error"]["code"] in ("invalid_message", "record_refused"), bad.text
        buyer_id, _ = server.account("buyer", "After NUL", deposit=5_000)
        assert balance(server, buyer_id) == 5_000
        dep = server.http.post(f"/v1/accounts/{buyer_id}/deposits", json={"amount_cents": 7, "reference": "r\u0000x"}, headers=admin)
        assert dep.status_code == 422 and dep.json()["error"]["code"] in ("invalid_message", "record_refused"), dep.text
        assert balance(server, buyer_id) == 5_000  # the refused deposit moved nothing, here or in the store
        for i in range(5):
            ok = server.http.post(f"/v1/accounts/{buyer_id}/deposits", json={"amount_cents": 10, "reference": f"d{i}"}, headers=admin)
            assert ok.status_code == 201, ok.text
        server.account("publisher", "Acme Calls")
        assert server.http.get("/readyz").status_code == 200
        st = server.http.get(f"/v1/accounts/{buyer_id}/statement", headers=admin).json()
        assert st["closing_balance_cents"] == 5_050 and len(st["lines"]) == 6

        # a refund whose reason holds a NUL: refused alone, then the same refund with a clean reason goes through
        m = market(server, "poison", VERT, 4000, 50_000)
        (call,) = route_calls(server, m, 1, VERT, "IL", "+1312666")
        done = server.http.post(f"/v1/calls/{call}/events", json={"event": "completed", "duration_s": 90},
                                headers={**m.auth, "Idempotency-Key": "done"})
        assert done.status_code == 200, done.text
        url = f"/v1/calls/{call}/refund"
        r = server.http.post(url, json={"amount_cents": 1000, "reference": "r1", "reason": "dis\u0000pute"}, headers=admin)
        assert r.status_code == 422 and r.json()["error"]["code"] in ("invalid_message", "record_refused"), r.text
        r = server.http.post(url, json={"amount_cents": 1000, "reference": "r1", "reason": "dispute"}, headers=admin)
        assert r.status_code == 201 and r.json()["refunded_total_cents"] == 1000, r.text
        assert balance(server, m.buyer_id) == 50_000 - 4000 + 1000
        metrics = server.http.get("/metrics").text
        assert "exchange_ledger_writer_up 1" in metrics
        m.buyer.close()  # type: ignore[attr-defined]
    finally:
        stop_server(server)
    for args in (("audit", "verify"), ("billing", "reconcile")):
        out = cli(pg_database_url, *args)
        assert out.returncode == 0, out.stdout + out.stderr
