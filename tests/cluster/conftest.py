"""Several real exchange processes as nodes of one market: a PostgreSQL schema of their own
(dropped after) and a Redis market prefix of their own (its keys deleted after). Under
``CI=true`` a missing PostgreSQL or Redis is a failure, not a skip."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
import sys
from pathlib import Path
from typing import NamedTuple
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.e2e.conftest import ADMIN, Server, free_port, start_server
from tests.integration.conftest import pg_schema_url

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("EXCHANGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Market(NamedTuple):
    database_url: str
    redis_url: str
    name: str  # EXCHANGE_MARKET: the prefix of every key the nodes make

    def env(self, node_id: str | None, **extra: str) -> dict[str, str]:
        out = {"EXCHANGE_DATABASE_URL": self.database_url, "EXCHANGE_REDIS_URL": self.redis_url, "EXCHANGE_MARKET": self.name,
               "EXCHANGE_NODE_LEASE_MS": "1500", **extra}
        if node_id is not None:
            out["EXCHANGE_NODE_ID"] = node_id
        return out


def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is required under CI=true ({REDIS_URL}): {exc}")
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    return client


@pytest.fixture
def market() -> Iterator[Market]:
    client = redis_client()
    name = f"t{secrets.token_hex(5)}"
    try:
        for url in pg_schema_url("nodes"):
            yield Market(url, REDIS_URL, name)
    finally:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def start_node(market: Market, node_id: str | None, host: str | None = None, prefix: tuple[str, ...] = (), **extra: str) -> Server:
    return start_server(market.env(node_id, **extra), deadline_s=40, host=host, prefix=prefix)


def refused_start(market: Market, node_id: str | None, timeout_s: float = 40, **extra: str) -> tuple[int, str]:
    """Run ``serve`` expecting it to refuse: (exit code, what it printed)."""
    env = {**os.environ, "EXCHANGE_ADMIN_KEY": ADMIN, "EXCHANGE_PORT": str(free_port()), **market.env(node_id, **extra)}
    try:
        done = subprocess.run([sys.executable, "-m", "exchange", "serve"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the node started instead of refusing: {exc.stdout!r} {exc.stderr!r}") from None
    return done.returncode, done.stdout + done.stderr


def submit(server: Server, auth: dict[str, str], caller: str, vertical: str = "solar") -> dict:
    """One inbound call from ``caller`` in CA, answered 200 (its decision)."""
    r = server.http.post("/v1/calls", json={"caller": caller, "vertical": vertical, "state": "CA"}, headers=auth)
    assert r.status_code == 200, r.text
    return r.json()


def until(pred, timeout_s: float = 15, what: str = ""):
    """``pred()``'s first truthy value, polled every 0.1 s for up to ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def role(server: Server) -> str | None:
    """The node's role from ``/readyz`` (None while it is not ready: stale, or its process being replaced)."""
    try:
        r = server.http.get("/readyz", timeout=2)
        return r.json().get("role") if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def books_exact(database_url: str) -> None:
    """``billing reconcile`` and ``audit verify`` pass on the market's database."""
    env = {**os.environ, "EXCHANGE_DATABASE_URL": database_url}
    for cmd in (["billing", "reconcile"], ["audit", "verify"]):
        out = subprocess.run([sys.executable, "-m", "exchange", *cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
