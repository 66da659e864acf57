"""The compliance-data endpoints on a real server: uploads, consents, revocation, persistence."""

from __future__ import annotations

import io
import zipfile
from datetime import datetime, timezone

import pytest

from exchange.messages import Campaign
from tests.e2e.clockshift import outbound_plan
from tests.e2e.conftest import start_server, stop_server
from tests.e2e.wsclient import Buyer

pytestmark = pytest.mark.e2e
VERT = "e2e_compliance"
def test_compliance_data_endpoints_end_to_end(tmp_path):
    # the journal's numbers are sealed under keys in the ledger database: a restart keeps both
    env = {"EXCHANGE_COMPLIANCE_DIR": str(tmp_path / "data"), "EXCHANGE_MAX_DNC_UPLOAD_BYTES": "4096",
           "EXCHANGE_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}"}
    plan = outbound_plan()
    server = start_server(env, clock_shift_s=plan.shift_s)
    try:
        buyer_id, buyer_key = server.account("buyer", "cmp-b", deposit=1_000_000)
        b = Buyer(server.ws_url, buyer_key)
        ack = b.request(lambda s: Campaign(id="out", vertical=VERT, bid_cents=2000, destination="+18005550199",
                                           min_duration_s=30, accepts_outbound=True, seq=s))
        assert type(ack).__name__ == "Ack"
        pub_id, pub_key = server.account("publisher", "cmp-p")
        pub = {"Authorization": f"Bearer {pub_key}"}
        callee = plan.numbers(1)[0]
        other = "+12025550177"
        today = datetime.now(timezone.utc).date().isoformat()

        def call(number: str, token: str | None = None) -> dict:
            body = {"caller": "+18885550100", "callee": number, "direction": "outbound", "vertical": VERT}
            if token:
                body["consent_token"] = token
            r = server.http.post("/v1/calls", json=body, headers=pub)
            assert r.status_code == 200, r.text
            return r.json()

        assert call(callee)["reason"] == "dnc_snapshot_stale"  # no national snapshot yet: fail closed
        # -- national list upload (operator only), zipped, with a malformed line
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("ftc.txt", f"{other[2:5]},{other[5:]}\n3055550100\nnot-a-number\n")
        r = server.http.post(f"/v1/dnc/national?snapshot_date={today}", content=buf.getvalue(), headers=pub)
        assert r.status_code == 403
        r = server.http.post("/v1/dnc/national", content=buf.getvalue(), headers=server.admin)
        assert r.status_code == 422 and r.json()["error"]["path"] == "$.snapshot_date"
        r = server.http.post(f"/v1/dnc/national?snapshot_date={today}", content=b"2125550100\n" * 400, headers=server.admin)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"  # EXCHANGE_MAX_DNC_UPLOAD_BYTES
        r = server.http.post(f"/v1/dnc/national?snapshot_date={today}", content=buf.getvalue(), headers=server.admin)
        assert r.status_code == 201, r.text
        assert (r.json()["numbers"], r.json()["rejected"]) == (2, 1)
        assert call(callee)["reason"] == "consent_missing"
        # -- consents
        consent = {"token": "tok-1", "phone": callee, "sellers": [buyer_id], "created_at": "2026-01-01T00:00:00Z"}
        assert server.http.post("/v1/consents", json=consent, headers=pub).status_code == 201
        assert server.http.post("/v1/consents", json=consent, headers=pub).status_code == 200
        assert server.http.post("/v1/consents", json={**consent, "sellers": ["x"]}, headers=pub).status_code == 409
        bad = server.http.post("/v1/consents", json={**consent, "token": "t2", "phone": "nope"}, headers=pub)
        assert bad.status_code == 422 and bad.json()["error"]["path"] == "$.phone"
        naive = server.http.post("/v1/consents", json={**consent, "token": "t3", "created_at": "2026-01-01T00:00:00"}, headers=pub)
        assert naive.status_code == 422
        d = call(callee, "tok-1")
        assert d["decision"] == "routed" and d["route"]["buyer"] == buyer_id, d
        ev = server.http.get(f"/v1/calls/{d['call_id']}", headers=server.admin).json()["evidence"]
        assert ev["dnc_snapshot_date"] == today and ev["npa_table"].startswith("npa-") and ev["reason"] == "ok"
        # -- a registered number without consent, and a corrupt upload that changes nothing
        assert call(other)["reason"] == "national_dnc"
        r = server.http.post(f"/v1/dnc/national?snapshot_date={today}", content=b"PK\x03\x04broken", headers=server.admin)
        assert r.status_code == 422 and r.json()["error"]["code"] == "import_rejected"
        assert call(other)["reason"] == "national_dnc" and call(callee, "tok-1")["decision"] == "routed"
        # -- a state list
        r = server.http.post(f"/v1/dnc/state/TX?snapshot_date={today}", content=b"2145550100\n", headers=server.admin)
        assert r.status_code == 201 and r.json()["list"] == "state-TX"
        assert server.http.post(f"/v1/dnc/state/tx?snapshot_date={today}", content=b"1\n", headers=server.admin).status_code == 422
        # -- revocation: the consent and an exchange-wide opt-out
        assert server.http.post("/v1/consents/nope/revoke", headers=server.admin).status_code == 404
        r = server.http.post("/v1/consents/tok-1/revoke", json={"channel": "sms_stop"}, headers=pub)
        assert r.status_code == 200 and r.json()["scope"] == "exchange"
        assert call(callee, "tok-1")["reason"] == "internal_dnc"
        # the existing suppression endpoint still works
        assert server.http.post("/v1/suppressions", json={"number": "+13125550199"}, headers=server.admin).status_code == 201
    finally:
        stop_server(server)
    # -- a restart with the same directory keeps the snapshot, the consent and the opt-outs
    server = start_server(env, clock_shift_s=plan.shift_s)
    try:
        _, pub_key = server.account("publisher", "cmp-p2")
        r = server.http.post("/v1/calls", json={"caller": "+18885550100", "callee": callee, "direction": "outbound",
                                                "vertical": VERT, "consent_token": "tok-1"},
                             headers={"Authorization": f"Bearer {pub_key}"})
        assert r.json()["reason"] == "internal_dnc"
        r = server.http.post("/v1/calls", json={"caller": "+18885550100", "callee": other, "direction": "outbound", "vertical": VERT},
                             headers={"Authorization": f"Bearer {pub_key}"})
        assert r.json()["reason"] == "national_dnc"
    finally:
        stop_server(server)
