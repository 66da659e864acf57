"""Isolation survives a restart: accounts come back from their key digests only, and the
recorded answers of finished calls (served from the audit trail) go to their publisher only."""

from __future__ import annotations

import pytest

from exchange.messages import Campaign
from tests.e2e.conftest import stop_server
from tests.e2e.wsclient import Buyer
from tests.security.kit import bearer, make_tenants, start

pytestmark = pytest.mark.e2e


def test_restored_accounts_and_recorded_answers_stay_isolated(tmp_path):
    env = {"EXCHANGE_DATABASE_URL": f"sqlite:///{tmp_path}/ledger.db", "EXCHANGE_COMPLIANCE_DIR": str(tmp_path / "compliance")}
    server, _ = start(env)
    try:
        t = make_tenants(server, "restart", deposit=50_000)
        a = Buyer(server.ws_url, t.a.key)
        ack = a.request(lambda s: Campaign(id="c", vertical="sec_restart", bid_cents=3000, destination="+18005550101",
                                           min_duration_s=30, seq=s))
        assert type(ack).__name__ == "Ack"
        d = server.http.post("/v1/calls", json={"caller": "+13125550142", "vertical": "sec_restart"}, headers=t.p1.auth).json()
        assert d["route"]["buyer"] == t.a.id
        events = f"/v1/calls/{d['call_id']}/events"
        done = {"event": "completed", "duration_s": 75}
        assert server.http.post(events, json={"event": "connected"}, headers={**t.p1.auth, "Idempotency-Key": "k1"}).status_code == 200
        answer = server.http.post(events, json=done, headers={**t.p1.auth, "Idempotency-Key": "k2"})
        assert answer.status_code == 200 and answer.json()["charged_cents"] == 3000
        a.close()
    finally:
        stop_server(server)

    server, _ = start(env)  # same ledger: the call is finished and no longer in memory
    try:
        http = server.http
        replay = http.post(events, json=done, headers={**t.p1.auth, "Idempotency-Key": "k2"})
        assert replay.status_code == 200 and replay.json() == answer.json()  # the owner gets its recorded answer
        for key, ev in (("k2", done), ("k1", {"event": "connected"}), ("k3", {"event": "failed"})):
            r = http.post(events, json=ev, headers={**t.p2.auth, "Idempotency-Key": key})
            assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_call", (key, r.text)
            assert http.post(events, json=ev, headers={**t.b.auth, "Idempotency-Key": key}).status_code == 403
        assert http.get(f"/v1/calls/{d['call_id']}", headers=t.p2.auth).status_code == 404
        # restored keys authenticate as their own account, and only as it
        assert http.get(f"/v1/accounts/{t.a.id}/balance", headers=t.a.auth).json()["balance_cents"] == 50_000 - 3000
        assert http.get(f"/v1/accounts/{t.p1.id}/balance", headers=t.p1.auth).json()["balance_cents"] == 2400
        for owner, other in ((t.a, t.b), (t.b, t.a), (t.p1, t.p2), (t.p2, t.p1), (t.a, t.p1), (t.p1, t.a)):
            for what in ("balance", "statement"):
                assert http.get(f"/v1/accounts/{owner.id}/{what}", headers=other.auth).status_code == 404, (owner, other, what)
        assert http.post("/v1/accounts", json={"kind": "buyer", "name": "x"}, headers=t.a.auth).status_code == 403
        assert http.get(f"/v1/accounts/{t.a.id}/balance", headers=bearer(t.a.key[:-1])).status_code == 401
    finally:
        stop_server(server)
