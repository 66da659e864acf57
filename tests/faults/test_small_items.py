"""The smaller hostile-tenant findings, each against a live exchange over real sockets:

- consent tokens are scoped per publisher: a second publisher posting a token the first one
  already has gets its own record (201), not ``409 consent_conflict`` (which told it the token
  exists);
- a refused second ``connected`` leaves no trace in the call's event history;
- ``/readyz`` (open to anyone) never shows the database's own error text;
- a client that disconnects mid-body costs one log line, no traceback;
- a rejected call keeps only what ``GET`` and an idempotent replay need.
"""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests.e2e.conftest import market, start_server, stop_server
from tests.integration.conftest import PG_BASE


@pytest.fixture(scope="module")
def live():
    s = start_server()
    yield s
    stop_server(s)


def _consent(token: str, phone: str, sellers: list[str]) -> dict:
    created = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"token": token, "phone": phone, "sellers": sellers, "created_at": created}


def test_consent_tokens_are_scoped_per_publisher(live, faults):
    http = live.http
    a, _ = live.account("buyer", "scope-a")
    b, _ = live.account("buyer", "scope-b")
    _, k1 = live.account("publisher", "scope-p1")
    _, k2 = live.account("publisher", "scope-p2")
    p1, p2 = {"Authorization": f"Bearer {k1}"}, {"Authorization": f"Bearer {k2}"}
    mine = _consent("lead-7731", "+12125550131", [a])
    assert http.post("/v1/consents", json=mine, headers=p1).status_code == 201
    theirs = _consent("lead-7731", "+12125550132", [b])
    faults.bad_input("consent token another publisher holds")
    r = http.post("/v1/consents", json=theirs, headers=p2)
    assert r.status_code == 201 and r.json()["created"] is True, r.text  # p2 learns nothing about p1's token
    assert http.post("/v1/consents", json=theirs, headers=p2).status_code == 200  # p2's own record, again
    r = http.post("/v1/consents", json={**theirs, "sellers": [a]}, headers=p2)
    assert r.status_code == 409 and r.json()["error"]["code"] == "consent_conflict"  # a conflict with its own record only
    assert http.post("/v1/consents", json=mine, headers=p1).status_code == 200  # p1's record untouched
    r = http.post("/v1/consents/lead-7731/revoke", headers=p2)  # p2 revokes its own record, not p1's
    assert r.status_code == 200 and r.json()["number"] == "+12125550132", r.text
    r = http.post("/v1/consents/lead-7731/revoke", headers=p1)
    assert r.status_code == 200 and r.json()["number"] == "+12125550131", r.text


def test_a_refused_second_connected_leaves_no_trace(live, faults):
    m = market(live, "twice", "faults_twice", 1500, 100_000)
    d = live.http.post("/v1/calls", json={"caller": "+13125550170", "vertical": "faults_twice", "state": "IL"}, headers=m.auth).json()
    assert d["decision"] == "routed", d
    ev = f"/v1/calls/{d['call_id']}/events"
    assert live.http.post(ev, json={"event": "connected"}, headers={**m.auth, "Idempotency-Key": "c1"}).status_code == 200
    faults.bad_input("second connected")
    r = live.http.post(ev, json={"event": "connected"}, headers={**m.auth, "Idempotency-Key": "c2"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "already_connected", r.text
    call = live.http.get(f"/v1/calls/{d['call_id']}", headers=m.auth).json()
    assert [e["event"] for e in call["events"]] == ["routed", "connected"], call["events"]
    m.buyer.close()


def test_a_client_leaving_mid_body_costs_one_log_line(live, faults):
    _, key = live.account("publisher", "leaver")
    before = live.log()
    n = 5
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", live.port)) as s:
            s.sendall(b"POST /v1/calls HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode()
                      + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"caller\":")
            time.sleep(0.05)
    faults.bad_input("disconnect mid-body", n)
    time.sleep(0.5)
    assert live.http.get("/healthz").status_code == 200
    new = live.log()[len(before):]
    assert "Traceback" not in new, new[-3000:]
    lines = [x for x in new.splitlines() if x.strip()]
    assert len([x for x in lines if "disconnect" in x]) == n and len(lines) <= 2 * n, new[-3000:]


@pytest.fixture
def no_quality():
    """A server whose call quality signals are off: each distinct caller otherwise adds an entry
    to the signals' sliding window (~300-400 bytes, bounded by EXCHANGE_QUALITY_MAX_EVENTS and the
    window, README "Call quality"), which is not the call's own record measured here."""
    s = start_server({"EXCHANGE_QUALITY_SIGNALS": "false"})
    yield s
    stop_server(s)


def test_a_rejected_call_keeps_only_what_get_and_replay_need(no_quality, faults):
    live = no_quality
    _, key = live.account("publisher", "rejects")
    auth = {"Authorization": f"Bearer {key}"}

    def rss() -> int:
        with open(f"/proc/{live.proc.pid}/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) * 1024

    body = {"caller": "+13125550180", "vertical": "faults_nobody", "state": "IL", "tags": {"lead": "x" * 64}}
    first = live.http.post("/v1/calls", json=body, headers={**auth, "Idempotency-Key": "rej-0"}).json()
    assert first["decision"] == "rejected"
    n = 3000
    start = rss()
    for i in range(n):
        live.http.post("/v1/calls", json={**body, "caller": f"+1312555{i:04d}"}, headers={**auth, "Idempotency-Key": f"rej-{i + 1}"})
    per_call = (rss() - start) / n
    again = live.http.post("/v1/calls", json=body, headers={**auth, "Idempotency-Key": "rej-0"}).json()
    assert again == first
    got = live.http.get(f"/v1/calls/{first['call_id']}", headers=auth).json()
    assert got["status"] == "rejected" and got["decision"] == first and got["request"]["tags"] == body["tags"]
    assert got["evidence"]["reason"] and got["events"] == []
    assert per_call < 2500, per_call  # before trimming: ~2,860 bytes; after: ~2,150-2,300 (this machine)


def test_readyz_shows_no_database_text(faults):
    from tests.integration.conftest import pg_schema_url

    gen = pg_schema_url("faults_ready")
    url = next(gen)
    schema = url.rpartition("schema=")[2]
    server = start_server({"EXCHANGE_DATABASE_URL": url})
    try:
        buyer, _ = server.account("buyer", "ready-b")

        async def drop() -> None:
            conn = await asyncpg.connect(PG_BASE, timeout=5)
            try:
                await conn.execute(f'DROP TABLE "{schema}".audit CASCADE')
            finally:
                await conn.close()

        asyncio.run(drop())
        faults.injected("audit table dropped under the writer")
        server.http.post(f"/v1/accounts/{buyer}/deposits", json={"amount_cents": 100, "reference": "r1"}, headers=server.admin)
        end = time.monotonic() + 5
        while time.monotonic() < end:
            r = server.http.get("/readyz")
            assert "audit" not in r.text and "relation" not in r.text and "exist" not in r.text, r.text
            if r.status_code == 503:
                break
            time.sleep(0.1)
        if r.status_code == 503:
            assert r.json()["error"]["code"].startswith("ledger_"), r.text
    finally:
        stop_server(server)
        gen.close()
