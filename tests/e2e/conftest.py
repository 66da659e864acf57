"""A real exchange process on a free port, and real HTTP / WebSocket clients for it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, NamedTuple

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "dce_admin_e2e_" + "x" * 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server(port: int) -> subprocess.Popen:
    """A private, empty redis-server on ``port`` (no persistence), once it accepts connections."""
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("redis-server did not start")


class Server:
    def __init__(self, port: int, proc: subprocess.Popen, host: str = "127.0.0.1") -> None:
        self.port, self.proc, self.host = port, proc, host
        self.url = f"http://{host}:{port}"
        self.ws_url = f"ws://{host}:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=10)
        self.admin = {"Authorization": f"Bearer {ADMIN}"}
        self.log_path = ""

    def log(self) -> str:
        """What the server wrote to stdout and stderr so far."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def account(self, kind: str, name: str, deposit: int = 0, credit: int = 0) -> tuple[str, str]:
        r = self.http.post("/v1/accounts", json={"kind": kind, "name": name, "credit_limit_cents": credit}, headers=self.admin)
        assert r.status_code == 201, r.text
        body = r.json()
        if deposit:
            d = self.http.post(f"/v1/accounts/{body['id']}/deposits", json={"amount_cents": deposit, "reference": f"init-{name}"}, headers=self.admin)
            assert d.status_code == 201, d.text
        return body["id"], body["api_key"]


def start_server(extra_env: dict[str, str] | None = None, deadline_s: float = 20, port: int | None = None,
                 host: str | None = None, prefix: tuple[str, ...] = (), clock_shift_s: int = 0) -> Server:
    """``prefix``: a command that runs the server (``ip netns exec NS``); ``host``: the address it
    binds and is reached at (``EXCHANGE_HOST``); ``clock_shift_s``: how far ahead its wall clock
    runs (``tests.e2e.clockshift``)."""
    port = port or free_port()
    db = f"sqlite:///{tempfile.mkdtemp(prefix='dce-e2e-')}/ledger.db"  # each server its own embedded ledger
    env = {**os.environ, "EXCHANGE_ADMIN_KEY": ADMIN, "EXCHANGE_PORT": str(port), "EXCHANGE_DATABASE_URL": db, **(extra_env or {})}
    if host is not None:
        env["EXCHANGE_HOST"] = host
    log = tempfile.NamedTemporaryFile(prefix="dce-server-", suffix=".log", delete=False)  # a file, not a pipe: never blocks
    runner = ("-m", "tests.e2e.shifted", str(clock_shift_s)) if clock_shift_s else ("-m", "exchange")
    proc = subprocess.Popen([*prefix, sys.executable, *runner, "serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(port, proc, host or "127.0.0.1")
    server.log_path = log.name
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {server.log()[-2000:]}")
        try:
            if server.http.get("/readyz").status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not become ready")


def stop_server(server: Server) -> None:
    server.http.close()
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = start_server()
    yield s
    stop_server(s)


class Market(NamedTuple):
    """One buyer with one standing campaign on an open socket, and one publisher."""

    buyer_id: str
    buyer_key: str
    publisher_id: str
    publisher_key: str
    buyer: object  # tests.e2e.wsclient.Buyer
    auth: dict[str, str]  # the publisher's Authorization header


def market(server: Server, tag: str, vertical: str, bid_cents: int, deposit: int, dedupe_days: int = 0) -> Market:
    from exchange.messages import Campaign
    from tests.e2e.wsclient import Buyer

    buyer_id, buyer_key = server.account("buyer", f"{tag}-buyer", deposit=deposit)
    pub_id, pub_key = server.account("publisher", f"{tag}-pub")
    b = Buyer(server.ws_url, buyer_key)
    b.request(lambda s: Campaign(id=f"{tag}-c", vertical=vertical, bid_cents=bid_cents, destination="+18005550199",
                                 min_duration_s=60, dedupe_days=dedupe_days, seq=s))
    return Market(buyer_id, buyer_key, pub_id, pub_key, b, {"Authorization": f"Bearer {pub_key}"})


def route_calls(server: Server, m: Market, n: int, vertical: str, state: str, prefix: str) -> list[str]:
    """Submit ``n`` inbound calls from ``prefix`` + 4 digits; every one must be routed."""
    calls = []
    for k in range(n):
        d = server.http.post("/v1/calls", json={"caller": f"{prefix}{k:04d}", "vertical": vertical, "state": state}, headers=m.auth).json()
        assert d["decision"] == "routed", d
        calls.append(d["call_id"])
    return calls
