"""Idempotency survives a crash: a call submitted with an ``Idempotency-Key``, SIGKILL, restart,
the same submission -> the original decision (same call id), no second ``win``, the funds held
once. Calls that finished (or were rejected) before the kill get their decision back too."""

from __future__ import annotations

import signal
import time

from tests.e2e.conftest import Server, market, start_server, stop_server

VERT = "faults_idem"
PRICE = 2500


def _held(server: Server, account: str) -> int:
    return server.http.get(f"/v1/accounts/{account}/balance", headers=server.admin).json()["held_cents"]


def _durable(server: Server, call_id: str) -> None:
    end = time.monotonic() + 10
    while not server.http.get("/v1/audit", params={"call_id": call_id}, headers=server.admin).json()["records"]:
        assert time.monotonic() < end, "the decision never reached the audit trail"
        time.sleep(0.05)


def test_a_keyed_call_retried_after_sigkill_gets_its_original_decision(database_url, faults):
    from exchange.messages import Campaign, Win
    from tests.e2e.wsclient import Buyer

    server = start_server({"EXCHANGE_DATABASE_URL": database_url})
    port = server.port
    m = market(server, "idem", VERT, PRICE, 1_000_000)
    auth = m.auth
    in_flight = {"caller": "+14155550101", "vertical": VERT, "state": "CA"}
    finished = {"caller": "+14155550102", "vertical": VERT, "state": "CA"}
    rejected = {"caller": "+14155550103", "vertical": "faults_idem_nobody", "state": "CA"}
    first = {}
    for key, call in (("k-live", in_flight), ("k-done", finished), ("k-rej", rejected)):
        r = server.http.post("/v1/calls", json=call, headers={**auth, "Idempotency-Key": key})
        assert r.status_code == 200, r.text
        first[key] = r.json()
        _durable(server, first[key]["call_id"])
    assert first["k-live"]["decision"] == "routed" and first["k-rej"]["decision"] == "rejected"
    done = first["k-done"]["call_id"]
    r = server.http.post(f"/v1/calls/{done}/events", json={"event": "completed", "duration_s": 120}, headers={**auth, "Idempotency-Key": "e0"})
    assert r.status_code == 200 and r.json()["billable"], r.text
    assert _held(server, m.buyer_id) == PRICE
    m.buyer.close()
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    faults.injected("SIGKILL after keyed submissions")
    server.http.close()

    again = start_server({"EXCHANGE_DATABASE_URL": database_url}, port=port)
    try:
        b = Buyer(again.ws_url, m.buyer_key)  # the buyer comes back with its campaign: a second win would reach it
        b.request(lambda s: Campaign(id="idem-c", vertical=VERT, bid_cents=PRICE, destination="+18005550199", min_duration_s=60, seq=s))
        for key, call in (("k-live", in_flight), ("k-done", finished), ("k-rej", rejected)):
            r = again.http.post("/v1/calls", json=call, headers={**auth, "Idempotency-Key": key})
            assert r.status_code == 200, r.text
            got = r.json()
            assert got["call_id"] == first[key]["call_id"], (key, got, first[key])
            assert {k: v for k, v in got.items() if k != "decision_us"} == {k: v for k, v in first[key].items() if k != "decision_us"}
        r = again.http.post("/v1/calls", json={**in_flight, "caller": "+14155550199"}, headers={**auth, "Idempotency-Key": "k-live"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_conflict", r.text
        r = again.http.post("/v1/calls", json={**rejected, "state": "TX"}, headers={**auth, "Idempotency-Key": "k-rej"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_conflict", r.text
        assert _held(again, m.buyer_id) == PRICE  # held once, not twice
        try:
            extra = b.wait_for(lambda msg: isinstance(msg, Win), timeout=0.5)
        except TimeoutError:
            extra = None
        assert extra is None, extra
        b.close()
    finally:
        stop_server(again)
