"""PostgreSQL restarted under load: completion events get 503 with Retry-After while it is
down, the ledger writer reconnects, and nothing acknowledged is lost or charged twice."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, market, route_calls, start_server, stop_server
from tests.e2e.test_exchange_e2e import balance
from tests.faults.kit import Publisher
from tests.integration.conftest import _drop, require_pg, schema_url

VERT = "faults_pg"
PRICE = 1800


def _cluster() -> tuple[str, str]:
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir()) if Path("/etc/postgresql").is_dir() else []
    if not versions:
        pytest.skip("no local PostgreSQL cluster to restart (pg_ctlcluster)")
    return versions[0], "main"


def _pg(action: str) -> None:
    version, name = _cluster()
    args = ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action]
    if action == "stop":
        args += ["-m", "fast"]
    subprocess.run(args, check=True, capture_output=True, timeout=60)


def _wait_pg(up: bool, deadline_s: float = 30) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        ok = subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432", "-q"]).returncode == 0
        if ok == up:
            return
        time.sleep(0.1)
    raise AssertionError(f"PostgreSQL did not become {'ready' if up else 'unavailable'}")


def test_postgres_restart_under_load_loses_nothing(faults):
    require_pg()
    schema = f"faults_pg_{secrets.token_hex(4)}"
    url = schema_url(schema)
    server = start_server({"EXCHANGE_DATABASE_URL": url, "EXCHANGE_ACK_TIMEOUT_MS": "300"})
    restarted = False
    try:
        m = market(server, "pg", VERT, PRICE, 5_000_000)
        buyer_id, pub_key, b, auth = m.buyer_id, m.publisher_key, m.buyer, m.auth
        calls = route_calls(server, m, 60, VERT, "WA", "+1206555")
        pubs = [Publisher(server.url, pub_key, c, [{"event": "connected"}, {"event": "completed", "duration_s": 200}]) for c in calls]
        for p in pubs[:20]:
            p.start()
        _pg("stop")
        restarted = True
        faults.injected("PostgreSQL stopped under load")
        _wait_pg(up=False)
        for p in pubs[20:]:
            p.start()
        time.sleep(1.5)  # the database stays down while publishers keep sending
        routed_while_down = server.http.post("/v1/calls", json={"caller": "+12065559999", "vertical": VERT, "state": "WA"}, headers=auth)
        assert routed_while_down.status_code == 200 and routed_while_down.json()["decision"] == "routed"  # routing goes on
        _pg("start")
        restarted = False
        _wait_pg(up=True)
        for p in pubs:
            p.join(60)
        assert not [e for p in pubs for e in p.errors]
        unavailable = sum(p.unavailable for p in pubs)
        faults.server_errors(0)  # 503 with Retry-After is the contract here, not a server error
        assert unavailable > 0, "no event met the outage: the test did not test anything"
        assert sum(p.retry_after_given for p in pubs) == unavailable  # every 503 said when to retry
        for p in pubs:
            assert p.answers[-1]["billable"] and p.answers[-1]["charged_cents"] == PRICE, p.answers
        end = time.monotonic() + 10
        while server.http.get("/readyz").status_code != 200 and time.monotonic() < end:
            time.sleep(0.1)
        assert server.http.get("/readyz").status_code == 200
        assert balance(server, buyer_id) == 5_000_000 - 60 * PRICE
        b.close()
    finally:
        if restarted:
            _pg("start")
            _wait_pg(up=True)
        stop_server(server)
    env = {**os.environ, "EXCHANGE_DATABASE_URL": url}
    rec = subprocess.run([sys.executable, "-m", "exchange", "billing", "reconcile"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    faults.discrepancies(0 if rec.returncode == 0 else 1)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    # the committed charges are exactly the 60 acknowledged ones: restart and read them back
    again = start_server({"EXCHANGE_DATABASE_URL": url})
    try:
        assert balance(again, buyer_id) == 5_000_000 - 60 * PRICE
    finally:
        stop_server(again)
        import asyncio

        asyncio.run(_drop(schema))
