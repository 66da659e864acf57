"""API keys: 256 bits of entropy, kept only as digests (in memory and in the durable store),
the operator's compared in constant time; and neither keys nor the caller numbers of lost
auctions ever reach the server's logs or the notices sent to losing buyers."""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import inspect
import secrets
import socket
import sqlite3
import textwrap
import threading

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from exchange.accounts import Accounts, digest
from exchange.messages import BidRequest, CallNotice, Campaign, Loss, NoBid, RtbBid, Win, json_encoder
from exchange.service import Exchange
from exchange.settings import Settings
from tests.e2e.conftest import ADMIN, stop_server
from tests.e2e.wsclient import Buyer
from tests.security.kit import bearer, make_tenants, start

pytestmark = pytest.mark.e2e


def key_bits(key: str, prefix: str = "dce_") -> bytes:
    assert key.startswith(prefix), key
    body = key[len(prefix):]
    assert set(body) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), key
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


# ---------------------------------------------------------------- entropy and storage
def test_api_keys_carry_256_bits_of_entropy():
    accounts = Accounts("dce_admin_" + secrets.token_urlsafe(32))
    keys = [accounts.create("buyer" if i % 2 else "publisher", f"n{i}")[1] for i in range(200)]
    raws = [key_bits(k) for k in keys]
    assert all(len(r) >= 32 for r in raws)
    assert len(set(keys)) == len(keys)
    # not degenerate: each of the 256 bit positions is set in some keys and clear in others
    ones = [sum((int.from_bytes(r[:32], "big") >> i) & 1 for r in raws) for i in range(256)]
    assert all(0 < n < len(raws) for n in ones)


def test_a_generated_operator_key_carries_256_bits(tmp_path):
    ex = Exchange(Settings(database_url=f"sqlite:///{tmp_path}/ledger.db", compliance_dir=str(tmp_path / "c")))
    assert len(key_bits(ex.admin_key, "dce_admin_")) >= 32


def strings_reachable(root: object) -> list[str]:
    """Every str / bytes reachable from ``root`` through attributes, slots and containers."""
    out: list[str] = []
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            out.append(obj)
        elif isinstance(obj, (bytes, bytearray)):
            out.append(bytes(obj).decode("latin-1"))
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif type(obj).__module__.startswith("exchange"):
            stack.extend(vars(obj).values() if hasattr(obj, "__dict__") else ())
            stack.extend(getattr(obj, s) for s in getattr(type(obj), "__slots__", ()) if hasattr(obj, s))
    return out


def test_accounts_hold_keys_only_as_digests():
    admin = "dce_admin_" + secrets.token_urlsafe(32)
    accounts = Accounts(admin)
    made = [accounts.create(kind, f"t{i}") for i, kind in enumerate(("buyer", "publisher", "buyer"))]
    held = strings_reachable(accounts)
    assert any(digest(made[0][1]) in s for s in held)  # the walk does reach the key table
    for secret in [admin, *(key for _, key in made)]:
        assert not [s for s in held if secret in s or secret[4:] in s], "a key is held in clear"
    for acct, key in made:
        assert accounts.authenticate(key) == acct


def test_durable_store_holds_no_key(tmp_path):
    (tmp_path / "db").mkdir()
    env = {"EXCHANGE_DATABASE_URL": f"sqlite:///{tmp_path}/db/ledger.db", "EXCHANGE_COMPLIANCE_DIR": str(tmp_path / "compliance")}
    server, _ = start(env)
    try:
        t = make_tenants(server, "store", deposit=10_000)
        extra = [server.account(kind, f"store-{kind}-{i}") for i in range(3) for kind in ("buyer", "publisher")]
        assert server.http.post("/v1/suppressions", json={"number": "+12125550100"}, headers=server.admin).status_code == 201
    finally:
        stop_server(server)
    issued = {**{x.id: x.key for x in t}, **dict(extra)}
    for key in issued.values():
        assert len(key_bits(key)) >= 32  # as issued over the wire
    db = sqlite3.connect(tmp_path / "db" / "ledger.db")
    try:
        cols = [c[1] for c in db.execute("PRAGMA table_info(accounts)")]
        rows = [dict(zip(cols, r)) for r in db.execute("SELECT * FROM accounts")]
    finally:
        db.close()
    assert {r["id"] for r in rows} == set(issued)
    for r in rows:
        assert r["key_digest"] == hashlib.sha256(issued[r["id"]].encode()).hexdigest()
        for value in r.values():
            for key in [ADMIN, *issued.values()]:
                assert key[4:] not in str(value), (r["id"], value)
    # nothing durable at all (database, WAL, compliance journal) holds a key in any column or page
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "ledger.db" for p in files)
    for p in files:
        data = p.read_bytes()
        for key in [ADMIN, *issued.values()]:
            assert key[4:].encode() not in data, (p, "holds a key")


def test_operator_key_is_compared_in_constant_time(monkeypatch):
    tree = ast.parse(textwrap.dedent(inspect.getsource(Accounts.authenticate)))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "hmac.compare_digest"]
    assert any("_admin_digest" in ast.unparse(c) for c in calls), "the operator key is not compared with hmac.compare_digest"
    plain = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Compare) and "admin" in ast.unparse(n)]
    assert not plain, f"the operator key is compared with ==: {plain}"
    # and at run time every authentication goes through it with the operator's digest
    admin = "dce_admin_" + secrets.token_urlsafe(32)
    accounts = Accounts(admin)
    _, key = accounts.create("buyer", "ct")
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    tries = [admin, admin[:-1] + ("A" if admin[-1] != "A" else "B"), key, "dce_" + secrets.token_urlsafe(32)]
    results = [accounts.authenticate(k) for k in tries]
    assert [r.kind if r else None for r in results] == ["operator", None, "buyer", None]
    assert len(seen) == len(tries) and all(digest(admin).encode() in pair for pair in seen)


# ---------------------------------------------------------------- logs and loss notices
class Bidder(threading.Thread):
    """An RTB buyer on its own thread: answers bid requests as ``plan[0]`` says, keeps every message."""

    def __init__(self, buyer: Buyer, bid_cents: int) -> None:
        super().__init__(daemon=True)
        self.buyer, self.bid_cents, self.plan = buyer, bid_cents, "bid"
        self.seen: list[object] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                msgs = self.buyer.recv(timeout=0.1)
            except TimeoutError:
                continue
            for m in msgs:
                self.seen.append(m)
                if isinstance(m, BidRequest) and self.plan == "bid":
                    self.buyer.send(RtbBid(request_id=m.request_id, bid_cents=self.bid_cents))
                elif isinstance(m, BidRequest) and self.plan == "no_bid":
                    self.buyer.send(NoBid(request_id=m.request_id))


def forms(number: str) -> list[str]:
    n = number[2:]
    return [number, n, f"{n[:3]}-{n[3:6]}-{n[6:]}", f"({n[:3]}) {n[3:6]}-{n[6:]}"]


def test_logs_and_loss_notices_hold_no_keys_and_no_losing_callers():
    server, log = start({"EXCHANGE_LOG_LEVEL": "debug"})
    clients: list[Buyer] = []
    bidders: list[Bidder] = []
    callers: dict[str, str] = {}  # call id -> caller
    try:
        t = make_tenants(server, "logs")
        (r1_id, r1_key), (r2_id, r2_key) = server.account("buyer", "logs-r1", 1_000_000), server.account("buyer", "logs-r2", 1_000_000)
        a, b = Buyer(server.ws_url, t.a.key), Buyer(server.ws_url, t.b.key)
        r1, r2 = Buyer(server.ws_url, r1_key), Buyer(server.ws_url, r2_key)
        clients = [a, b, r1, r2]
        for buyer, cid, vertical, bid, rtb in ((a, "s", "sec_logs", 3000, False), (b, "s", "sec_logs", 2000, False),
                                               (r1, "l", "sec_logs_rtb", 0, True), (r2, "l", "sec_logs_rtb", 0, True)):
            ack = buyer.request(lambda s: Campaign(id=cid, vertical=vertical, bid_cents=bid, destination="+18005550101",
                                                   min_duration_s=30, rtb=rtb, seq=s))
            assert type(ack).__name__ == "Ack", ack
        bidders = [Bidder(r1, 3500), Bidder(r2, 2500)]
        for x in bidders:
            x.start()

        def call(p, caller: str, vertical: str, **extra) -> dict:
            r = server.http.post("/v1/calls", json={"caller": caller, "vertical": vertical, **extra}, headers=p.auth)
            assert r.status_code == 200, r.text
            callers[r.json()["call_id"]] = caller
            return r.json()

        for i in range(5):  # standing bids: a wins, b loses
            d = call(t.p1 if i % 2 else t.p2, f"+1312555{300 + i:04d}", "sec_logs")
            assert d["route"]["buyer"] == t.a.id
            if i == 0:  # one of them connected and billed
                for k, ev in (("e1", {"event": "connected"}), ("e2", {"event": "completed", "duration_s": 60})):
                    server.http.post(f"/v1/calls/{d['call_id']}/events", json=ev, headers={**t.p2.auth, "Idempotency-Key": k})
        for plan, extra in (("bid", {"tmax_ms": 2000}), ("no_bid", {"tmax_ms": 2000}), ("silent", {"tmax_ms": 150}),
                            ("bid", {"tmax_ms": 2000, "floor_cents": 9000})):  # live bids: outbid, no bid, timeout, below floor
            bidders[1].plan = plan
            call(t.p1, f"+1415555{400 + len(callers):04d}", "sec_logs_rtb", **extra)
        call(t.p1, "+12125550555", "sec_logs_nobody")  # no eligible bid at all
        # noise a key or a number could leak through: bad keys, bad frames, bad bodies, a bad request line
        guessed = ["dce_" + secrets.token_urlsafe(32) for _ in range(3)]
        for g in guessed:
            assert server.http.get(f"/v1/accounts/{t.a.id}/balance", headers=bearer(g)).status_code == 401
            with pytest.raises(InvalidStatus):
                connect(f"{server.ws_url}/v1/buyers/ws", additional_headers=bearer(g))
        b.send_raw('{"type":"bid","campaign":"s","bid_cents":-1}')
        b.send_raw('{"type":"campaign","id":"x"}')
        server.http.post("/v1/calls", content=f'{{"caller":"{t.p1.key}","vertical":"v"'.encode(), headers=t.p1.auth)
        server.http.post("/v1/calls", json={"caller": "+1312555030", "vertical": "sec_logs"}, headers=t.p1.auth)
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            raw.sendall(f"GET /v1/audit HTTP/1.1\r\nAuthorization: Bearer {ADMIN}\r\n\x00{t.a.key}\r\n\r\n".encode())
            raw.recv(1000)
        for x in bidders:
            x.stop.set()
            x.join(5)
        b_seen = [*b.inbox]
        while True:
            try:
                b_seen.extend(b.recv(timeout=0.3))
            except TimeoutError:
                break
    finally:
        for x in bidders:
            x.stop.set()
        for c in clients:
            c.close()
        stop_server(server)
    text = log.text(wait_s=5)
    assert "Invalid HTTP request" in text  # the capture works: the server's stderr is in hand
    keys = [ADMIN, *(x.key for x in t), r1_key, r2_key, *guessed]
    assert not [k for k in keys if k[4:] in text], "an API key is in the server's log"
    assert not [n for n in callers.values() for f in forms(n) if f in text], "a caller's number is in the server's log"
    # notices: a buyer sees a caller only in a win of its own (and that call's notices)
    seen = {t.b.id: b_seen, r1_id: bidders[0].seen, r2_id: bidders[1].seen}
    losses = {buyer: [m.reason for m in msgs if isinstance(m, Loss)] for buyer, msgs in seen.items()}
    assert len(losses[t.b.id]) == 5 and {"outbid", "timeout", "below_floor"} <= set(losses[r2_id]), losses
    for buyer, msgs in seen.items():
        won = {m.call_id for m in msgs if isinstance(m, Win)}
        for m in msgs:
            if isinstance(m, (Win, CallNotice)) and m.call_id in won:
                continue
            wire = json_encoder.encode(m).decode()
            assert not [n for n in callers.values() for f in forms(n) if f in wire], (buyer, wire)
            assert not [k for k in keys if k[4:] in wire], (buyer, wire)
