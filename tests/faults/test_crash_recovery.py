"""SIGKILL under load, restart, and the publishers replay their events with the same keys:
no acknowledged event is lost, no call is charged twice, and the books reconcile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.e2e.conftest import ROOT, market, route_calls, start_server, stop_server
from tests.e2e.test_exchange_e2e import balance
from tests.faults.kit import Publisher

VERT = "faults_crash"
PRICE = 2500


def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EXCHANGE_DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "exchange", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_sigkill_under_load_then_replay_loses_nothing_and_charges_nothing_twice(database_url, faults):
    server = start_server({"EXCHANGE_DATABASE_URL": database_url})
    port = server.port
    m = market(server, "crash", VERT, PRICE, 10_000_000)
    buyer_id, pub_key, b, auth = m.buyer_id, m.publisher_key, m.buyer, m.auth
    calls = route_calls(server, m, 60, VERT, "CA", "+1415555")
    # a third completes before the kill, a third is connected, a third has had no event yet
    for c in calls[:20]:
        r = server.http.post(f"/v1/calls/{c}/events", json={"event": "completed", "duration_s": 120},
                             headers={**auth, "Idempotency-Key": f"{c}-0"})
        assert r.status_code == 200 and r.json()["billable"]
    for c in calls[20:40]:
        r = server.http.post(f"/v1/calls/{c}/events", json={"event": "connected"}, headers={**auth, "Idempotency-Key": f"{c}-0"})
        assert r.status_code == 200
    b.close()

    # every publisher (re)sends its whole sequence while the exchange is killed under it
    plans = {c: [{"event": "completed", "duration_s": 120}] for c in calls[:20]}
    plans.update({c: [{"event": "connected"}, {"event": "completed", "duration_s": 120}] for c in calls[20:40]})
    plans.update({c: [{"event": "connected"}, {"event": "completed", "duration_s": 120}] for c in calls[40:]})
    pubs = [Publisher(server.url, pub_key, c, evs) for c, evs in plans.items()]
    for p in pubs[::2]:
        p.start()
    time.sleep(0.05)
    server.proc.send_signal(signal.SIGKILL)  # mid-stream: some events applied, some acknowledged, some neither
    server.proc.wait(10)
    faults.injected("SIGKILL under load")
    for p in pubs[1::2]:
        p.start()
    server.http.close()

    again = start_server({"EXCHANGE_DATABASE_URL": database_url}, port=port)
    try:
        for p in pubs:
            p.join(90)
        assert not [e for p in pubs for e in p.errors]
        for p in pubs:  # every call ends billable, charged once, whichever attempt was answered
            last = p.answers[-1]
            assert last["status"] == "completed" and last["billable"] and last["charged_cents"] == PRICE, (p.call_id, p.answers)
        assert balance(again, buyer_id) == 10_000_000 - 60 * PRICE
        held = again.http.get(f"/v1/accounts/{buyer_id}/balance", headers=again.admin).json()["held_cents"]
        assert held == 0
        # a replay after everything settled still gets the same answer and moves nothing
        c = calls[45]
        r = again.http.post(f"/v1/calls/{c}/events", json={"event": "completed", "duration_s": 120}, headers={**auth, "Idempotency-Key": f"{c}-1"})
        assert r.status_code == 200 and r.json()["charged_cents"] == PRICE
        assert balance(again, buyer_id) == 10_000_000 - 60 * PRICE
    finally:
        stop_server(again)
    rec = _cli(database_url, "billing", "reconcile")
    faults.discrepancies(0 if rec.returncode == 0 else 1)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    verify = _cli(database_url, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_recovered_outbound_call_still_fails_over_to_its_fallback(database_url, faults):
    """After SIGKILL and a restart, a routed outbound call whose winner's leg fails moves to its
    fallback buyer (the gate's plan for the callee is rebuilt), and is charged to it once."""
    import tempfile
    from datetime import datetime, timezone

    from exchange.messages import Campaign
    from tests.e2e.wsclient import Buyer
    from tests.e2e.clockshift import outbound_plan

    env = {"EXCHANGE_DATABASE_URL": database_url, "EXCHANGE_COMPLIANCE_DIR": tempfile.mkdtemp(prefix="dce-compliance-")}
    plan = outbound_plan()
    server = start_server(env, clock_shift_s=plan.shift_s)
    port = server.port
    a_id, a_key = server.account("buyer", "out-a", 100_000)
    b_id, b_key = server.account("buyer", "out-b", 100_000)
    pub_id, pub_key = server.account("publisher", "out-pub")
    auth = {"Authorization": f"Bearer {pub_key}"}

    def campaigns(url: str) -> list:
        socks = []
        for key, bid in ((a_key, 3000), (b_key, 2000)):
            ws = Buyer(url, key)
            ack = ws.request(lambda s, bid=bid: Campaign(id="out", vertical="faults_out", bid_cents=bid, destination="+18005550199",
                                                         min_duration_s=30, accepts_outbound=True, seq=s))
            assert type(ack).__name__ == "Ack", ack
            socks.append(ws)
        return socks

    socks = campaigns(server.ws_url)
    today = datetime.now(timezone.utc).date().isoformat()
    r = server.http.post(f"/v1/dnc/national?snapshot_date={today}", content=b"2025550177\n", headers=server.admin)
    assert r.status_code == 201, r.text
    callee = plan.numbers(1)[0]
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = server.http.post("/v1/consents", json={"token": "crash-out", "phone": callee, "sellers": [a_id, b_id], "created_at": created},
                         headers=auth)
    assert r.status_code == 201, r.text
    d = server.http.post("/v1/calls", json={"caller": "+18885550100", "callee": callee, "direction": "outbound",
                                            "vertical": "faults_out", "consent_token": "crash-out"}, headers=auth).json()
    assert d["decision"] == "routed" and d["route"]["buyer"] == a_id and d["fallbacks"][0]["buyer"] == b_id, d
    call = d["call_id"]
    end = time.monotonic() + 10  # the decision (and its hold) durable before the kill
    while not server.http.get("/v1/audit", params={"call_id": call}, headers=server.admin).json()["records"]:
        assert time.monotonic() < end, "the decision never reached the audit trail"
        time.sleep(0.05)
    for ws in socks:
        ws.close()
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    faults.injected("SIGKILL with an outbound call routed")
    server.http.close()

    again = start_server(env, port=port, clock_shift_s=plan.shift_s)
    try:
        socks = campaigns(again.ws_url)  # the buyers come back with their campaigns
        ev = f"/v1/calls/{call}/events"
        r = again.http.post(ev, json={"event": "failed"}, headers={**auth, "Idempotency-Key": "f0"})
        assert r.status_code == 200, r.text
        moved = r.json()
        assert moved["status"] == "routed" and moved["route_index"] == 1 and moved["route"]["buyer"] == b_id, moved
        r = again.http.post(ev, json={"event": "completed", "duration_s": 60}, headers={**auth, "Idempotency-Key": "f1"})
        assert r.status_code == 200 and r.json()["billable"] and r.json()["charged_cents"] == 2000, r.text
        assert balance(again, a_id) == 100_000 and balance(again, b_id) == 98_000
        for ws in socks:
            ws.close()
    finally:
        stop_server(again)
    rec = _cli(database_url, "billing", "reconcile")
    assert rec.returncode == 0, rec.stdout + rec.stderr
