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
