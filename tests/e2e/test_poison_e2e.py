"""A record PostgreSQL cannot store (a NUL byte in an account name, a deposit reference or a
refund reason) is a clear 4xx for that request alone; the ledger writer keeps running and every
later request succeeds (it used to stop the writer: 503 ledger_stopped for everyone)."""

from __future__ import annotations

from tests.e2e.conftest import start_server, stop_server
from tests.e2e.test_exchange_e2e import balance
from tests.integration.conftest import pg_schema_url


def test_a_nul_byte_is_refused_to_its_request_alone_and_the_ledger_goes_on():
    for url in pg_schema_url("e2e_poison"):
        server = start_server({"EXCHANGE_DATABASE_URL": url})
        try:
            admin = server.admin
            bad = server.http.post("/v1/accounts", json={"kind": "publisher", "name": "Acme\u0000Calls"}, headers=admin)
            assert 400 <= bad.status_code < 500, bad.text
            assert bad.json()["error"]["code"] == "record_refused" and "p_" in bad.json()["error"]["message"], bad.text
            buyer_id, _ = server.account("buyer", "After NUL", deposit=5_000)
            assert balance(server, buyer_id) == 5_000
            dep = server.http.post(f"/v1/accounts/{buyer_id}/deposits", json={"amount_cents": 7, "reference": "r\u0000x"}, headers=admin)
            assert 400 <= dep.status_code < 500, dep.text
            assert balance(server, buyer_id) == 5_000  # the refused deposit moved nothing, here or in the store
            for i in range(5):
                ok = server.http.post(f"/v1/accounts/{buyer_id}/deposits", json={"amount_cents": 10, "reference": f"d{i}"}, headers=admin)
                assert ok.status_code == 201, ok.text
            pub_id, _ = server.account("publisher", "Acme Calls")
            assert server.http.get("/readyz").status_code == 200
            st = server.http.get(f"/v1/accounts/{buyer_id}/statement", headers=admin).json()
            assert st["closing_balance_cents"] == 5_050 and len(st["lines"]) == 6
        finally:
            stop_server(server)
