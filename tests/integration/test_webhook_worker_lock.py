"""One delivery worker per store on PostgreSQL: the second waits for the first's advisory lock.
The lock lives on a session of its own: when that session ends (a database restart, a killed
backend), the worker holding it stops delivering within seconds and waits for it again; one of
the two takes it and delivers, the other waits: never two delivering at once for long. (The lock used to sit on the writer's
connection, which the store replaces after a failure: the lock went with it unnoticed.)"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from tests.integration.conftest import PG_BASE, pg_schema_url

ROOT = Path(__file__).resolve().parents[2]


def _worker(url: str, key: str) -> tuple[subprocess.Popen, Path]:
    log = Path(tempfile.mkstemp(prefix="dce-worker-", suffix=".log")[1])
    env = {**os.environ, "EXCHANGE_DATABASE_URL": url, "EXCHANGE_MASTER_KEY": key, "EXCHANGE_WEBHOOK_ALLOW_LOOPBACK": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "exchange", "deliver"], cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return proc, log


def _until(pred, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


async def _holders(schema: str) -> list[int]:
    conn = await asyncpg.connect(PG_BASE.split("?", 1)[0], timeout=5)
    try:
        return [r[0] for r in await conn.fetch(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND objid = ((hashtext($1 || '.dce_webhooks')::bigint) & 4294967295)::oid", schema)]
    finally:
        await conn.close()


async def _terminate(pid: int) -> None:
    conn = await asyncpg.connect(PG_BASE.split("?", 1)[0], timeout=5)
    try:
        await conn.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()


def test_a_worker_whose_lock_session_ends_stops_and_the_other_takes_over() -> None:
    for url in pg_schema_url("wlock"):
        schema = url.rsplit("schema=", 1)[1]
        key = base64.b64encode(os.urandom(32)).decode()
        a, a_log = _worker(url, key)
        b = None
        try:
            _until(lambda: b"webhook_worker_started" in a_log.read_bytes(), 30, "the first worker delivering")
            b, b_log = _worker(url, key)
            _until(lambda: b"webhook_worker_waiting" in b_log.read_bytes(), 30, "the second worker waiting")
            holders = asyncio.run(_holders(schema))
            assert len(holders) == 1, holders

            asyncio.run(_terminate(holders[0]))  # the first worker's lock session ends
            _until(lambda: b"webhook_worker_lock_lost" in a_log.read_bytes(), 15, "the first worker noticing")

            def starts() -> int:  # deliveries begun, both workers together
                return a_log.read_bytes().count(b"webhook_worker_started") + b_log.read_bytes().count(b"webhook_worker_started")

            _until(lambda: starts() == 2, 15, "one of the two delivering again")  # the first to take the lock again
            time.sleep(2.5)  # the other keeps waiting
            assert starts() == 2 and a.poll() is None and b.poll() is None
            assert len(asyncio.run(_holders(schema))) == 1
        finally:
            for p in (a, b):
                if p is not None:
                    p.terminate()
                    p.wait(15)
