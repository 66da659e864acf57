"""STIR/SHAKEN and call quality through a real server on SQLite and on PostgreSQL: a call
attested C against a campaign that needs B, the bid modifier before the auction, a velocity
burst rejected with caller_velocity (HTTP and the publisher socket alike), the evidence on the
audit trail, the publisher's risk score in the reports, and malformed values refused with
their JSON paths."""

from __future__ import annotations

import json
import tempfile
import time

import pytest
from websockets.sync.client import connect

from exchange.messages import Campaign
from exchange.modifiers import AttestationModifiers, BidModifiers
from tests.e2e.conftest import start_server, stop_server
from tests.e2e.wsclient import Buyer

V = "qual_auto"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(request):
    schema = None
    if request.param == "postgres":
        from tests.integration.conftest import pg_schema_url

        schema = pg_schema_url("qual")
        db = next(schema)
    else:
        db = f"sqlite:///{tempfile.mkdtemp(prefix='dce-qual-')}/ledger.db"
    s = start_server({"EXCHANGE_DATABASE_URL": db, "EXCHANGE_QUALITY_VELOCITY_MAX_CALLS": "3", "EXCHANGE_PRICING": "first"})
    buyer_id, buyer_key = s.account("buyer", "qual-buyer", deposit=1_000_000)
    other_id, other_key = s.account("buyer", "qual-other", deposit=1_000_000)
    pub_id, pub_key = s.account("publisher", "qual-pub")
    strict, other = Buyer(s.ws_url, buyer_key), Buyer(s.ws_url, other_key)
    ack = strict.request(lambda q: Campaign(id="needs_b", vertical=V, bid_cents=4000, destination="+18005550199", min_duration_s=60,
                                            min_attestation="B", seq=q))
    assert type(ack).__name__ == "Ack", ack
    ack = other.request(lambda q: Campaign(id="discounts", vertical=V, bid_cents=3000, destination="+18005550198", min_duration_s=60,
                                           bid_modifiers=BidModifiers(attestation=AttestationModifiers(B=0.8, C=0.5)), seq=q))
    assert type(ack).__name__ == "Ack", ack
    w = {"s": s, "strict": (buyer_id, strict), "other": (other_id, other), "pub": (pub_id, {"Authorization": f"Bearer {pub_key}"}),
         "pub_key": pub_key, "buyer_key": buyer_key}
    yield w
    for ws in (strict, other):
        ws.close()
    stop_server(s)
    if schema is not None:
        next(schema, None)


def _call(w, caller, key=None, **kw):
    h = w["pub"][1] if key is None else {**w["pub"][1], "Idempotency-Key": key}
    r = w["s"].http.post("/v1/calls", json={"caller": caller, "vertical": V, "state": "CA", **kw}, headers=h)
    assert r.status_code == 200, r.text
    return r.json()


def _audit_decision(w, call_id):
    r = w["s"].http.get("/v1/audit", params={"call_id": call_id}, headers=w["s"].admin)
    assert r.status_code == 200, r.text
    return next(x["body"] for x in r.json()["records"] if x["kind"] == "decision")


def test_a_c_call_skips_the_campaign_that_needs_b_and_takes_the_modified_bid(world):
    d = _call(world, "+14155550101", key="att-c", attestation="C")
    other_id = world["other"][0]
    assert d["decision"] == "routed" and d["route"]["campaign"] == "discounts" and d["route"]["buyer"] == other_id
    assert d["fallbacks"] == []  # needs_b is not a fallback of a C call
    body = _audit_decision(world, d["call_id"])  # keyed: its record is durable before the answer
    q = body["quality"]
    assert q["attestation"] == "C" and q["skipped"] == {"attestation": 1}
    assert q["adjusted"] == [[other_id, "discounts", 3000, 1500, "0.5"]]
    assert body["routes"][0]["price_cents"] == 1500 and body["bids"][0]["bid_cents"] == 1500
    assert q["caller_calls"] == 1 and "publisher_risk" in q
    view = world["s"].http.get(f"/v1/calls/{d['call_id']}", headers=world["pub"][1]).json()
    assert view["quality"] == q  # the publisher reads the same evidence


def test_a_b_call_goes_to_the_campaign_that_needs_b(world):
    d = _call(world, "+14155550102", attestation="B")
    assert d["route"]["campaign"] == "needs_b"
    assert [f["campaign"] for f in d["fallbacks"]] == ["discounts"]
    assert d["fallbacks"][0]["payout_cents"] == 1920  # 3000 * 0.8 = 2400, less the 20 % take


def test_an_unattested_call_is_below_c(world):
    d = _call(world, "+14155550103")
    assert d["route"]["campaign"] == "discounts" and d["route"]["payout_cents"] == 1200  # the lowest multiplier, 0.5


def test_a_velocity_burst_is_rejected_with_caller_velocity_on_http_and_the_socket(world):
    got = [_call(world, "+14155550199", attestation="A")["decision"] for _ in range(3)]
    assert got == ["routed"] * 3
    d = _call(world, "+14155550199", key="burst-4", attestation="A")
    assert d["decision"] == "rejected" and d["reason"] == "caller_velocity" and d.get("route") is None
    q = _audit_decision(world, d["call_id"])["quality"]
    assert q["caller_calls"] == 4 and q["velocity_max_calls"] == 3 and q["window_s"] == 600
    ws_url = world["s"].ws_url
    with connect(f"{ws_url}/v1/publishers/ws", additional_headers={"Authorization": f"Bearer {world['pub_key']}"}) as ws:
        ws.send(json.dumps({"type": "call", "caller": "+14155550199", "vertical": V, "state": "CA", "attestation": "A", "seq": 7}))
        ans = json.loads(ws.recv(timeout=5))
        assert ans["type"] == "decision" and ans["seq"] == 7 and ans["reason"] == "caller_velocity"
        ws.send(json.dumps({"type": "call", "caller": "+14155550198", "vertical": V, "state": "CA", "attestation": "Z", "seq": 8}))
        err = json.loads(ws.recv(timeout=5))
        assert err["type"] == "error" and err["seq"] == 8 and err["path"] == "$.attestation"
    assert _call(world, "+14155550198", attestation="A")["decision"] == "routed"  # another caller: unaffected


def test_malformed_attestation_and_modifiers_are_refused_with_their_json_paths(world):
    s = world["s"]
    r = s.http.post("/v1/calls", json={"caller": "+14155550104", "vertical": V, "attestation": "a"}, headers=world["pub"][1])
    assert r.status_code == 422 and r.json()["error"]["path"] == "$.attestation", r.text
    assert "A, B, C" in r.json()["error"]["message"]
    _, ws = world["other"]
    seq = ws.next_seq()
    ws.send_raw(json.dumps({"type": "campaign", "id": "bad", "vertical": V, "bid_cents": 100, "destination": "+18005550199",
                            "min_duration_s": 1, "bid_modifiers": {"attestation": {"B": 1.2}}, "seq": seq}))
    err = ws.wait_for(lambda m: getattr(m, "seq", None) == seq)
    assert type(err).__name__ == "Error" and err.path == "$.bid_modifiers.attestation.B" and "never raise a bid" in err.message


def test_reports_show_each_publishers_risk_score_and_its_inputs(world):
    s, (pub_id, h) = world["s"], world["pub"]
    # completed events feed the publisher's duration signals: a paid call that ends 2 s past the 60 s buffer
    d = _call(world, "+14155550105", attestation="A")
    r = s.http.post(f"/v1/calls/{d['call_id']}/events", json={"event": "completed", "duration_s": 62}, headers={**h, "Idempotency-Key": "e1"})
    assert r.status_code == 200 and r.json()["billable"], r.text
    end = time.monotonic() + 5
    while True:
        rows = s.http.get("/v1/reports", params={"group_by": "publisher"}, headers=s.admin).json()["rows"]
        row = next(x for x in rows if x["key"] == pub_id)
        if row["quality"]["completed"] == 1 or time.monotonic() > end:
            break
        time.sleep(0.05)
    q = row["quality"]
    assert q["completed"] == 1 and q["payable"] == 1 and q["clustered"] == 1 and q["short"] == 0
    assert q["calls"] >= 8 and q["repeats"] >= 4
    assert 0 < q["risk_score"] <= 100
    own = s.http.get("/v1/reports", params={"group_by": "publisher"}, headers=h).json()["rows"]
    assert own[0]["quality"] == q
    metrics = s.http.get("/metrics").text
    assert "quality_window_calls" in metrics and "quality_window_evicted" in metrics
    buyer_rows = s.http.get("/v1/reports", params={"group_by": "publisher"},
                            headers={"Authorization": f"Bearer {world['buyer_key']}"}).json()["rows"]
    assert buyer_rows and set(buyer_rows[0]["quality"]) == {"risk_score"}

