"""The book survives a restart of the real server (graceful and kill -9), and
``cancel_on_disconnect`` holds a campaign out while its buyer has no open socket."""

from __future__ import annotations

import re
import signal
import tempfile
import time

from exchange.messages import Ack, Bid, Campaign, Caps, Ping, Pong, Win
from tests.e2e.conftest import Server, start_server, stop_server
from tests.e2e.wsclient import Buyer


def camp(cid: str, vertical: str, bid: int, **kw):
    return lambda s: Campaign(id=cid, vertical=vertical, bid_cents=bid, destination="+18005550199", min_duration_s=60, seq=s, **kw)


def call(server: Server, auth: dict[str, str], vertical: str, caller: str) -> dict:
    r = server.http.post("/v1/calls", json={"caller": caller, "vertical": vertical, "state": "CA"}, headers=auth)
    assert r.status_code == 200, r.text
    return r.json()


def gauge(server: Server, name: str) -> int:
    text = server.http.get("/metrics").text
    m = re.search(rf"^exchange_{name} (\d+)", text, re.M)
    assert m is not None, text[-500:]
    return int(m.group(1))


def wait_saved(server: Server, rows: int, timeout_s: float = 10) -> None:
    end = time.monotonic() + timeout_s
    while gauge(server, "book_rows_saved") < rows:
        assert time.monotonic() < end, "the book store saved nothing in time"
        time.sleep(0.05)


def test_campaigns_survive_restarts_and_cancel_on_disconnect_follows_the_socket() -> None:
    env = {"EXCHANGE_DATABASE_URL": f"sqlite:///{tempfile.mkdtemp(prefix='dce-book-')}/ledger.db", "EXCHANGE_BOOK_SAVE_MS": "50"}
    server = start_server(env)
    try:
        buyer_id, buyer_key = server.account("buyer", "durable-buyer", deposit=1_000_000)
        _, pub_key = server.account("publisher", "durable-pub")
        auth = {"Authorization": f"Bearer {pub_key}"}
        b = Buyer(server.ws_url, buyer_key)
        assert isinstance(b.request(camp("stay", "solar", 2000)), Ack)
        assert isinstance(b.request(camp("cod", "roofing", 3000, cancel_on_disconnect=True)), Ack)
        assert call(server, auth, "roofing", "+14155550101")["decision"] == "routed"
        b.close()
        time.sleep(0.3)  # the server sees the close
        assert call(server, auth, "roofing", "+14155550102")["reason"] == "no_eligible_bid"  # held out: no socket
        assert call(server, auth, "solar", "+14155550103")["decision"] == "routed"  # the other stays in the book
    finally:
        stop_server(server)  # graceful: the last changes are saved at shutdown

    server = start_server(env)
    try:
        assert call(server, auth, "solar", "+14155550104")["decision"] == "routed"  # restored
        assert call(server, auth, "roofing", "+14155550105")["reason"] == "no_eligible_bid"  # restored, held out
        b = Buyer(server.ws_url, buyer_key)
        assert isinstance(b.request(lambda s: Ping(seq=s)), Pong)  # the socket is registered
        d = call(server, auth, "roofing", "+14155550106")
        assert d["decision"] == "routed" and d["route"]["campaign"] == "cod"  # back with its buyer's socket
        assert b.wait_for(lambda m: isinstance(m, Win) and m.call_id == d["call_id"]).campaign == "cod"
        b.send(Bid(campaign="stay", bid_cents=2750))
        b.request(camp("late", "hvac", 1500))
        wait_saved(server, 2)  # the reprice and the new campaign are saved (then the process is killed)
        b.close()
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
    finally:
        stop_server(server)

    server = start_server(env)
    try:
        d = call(server, auth, "solar", "+14155550107")
        assert d["route"]["campaign"] == "stay" and d["route"]["payout_cents"] == 2200  # the saved price (2750, 20 % take)
        assert call(server, auth, "hvac", "+14155550108")["decision"] == "routed"
        assert buyer_id
    finally:
        stop_server(server)


def test_a_leg_in_flight_at_a_crash_keeps_its_concurrency_slot_on_the_restored_campaign() -> None:
    env = {"EXCHANGE_DATABASE_URL": f"sqlite:///{tempfile.mkdtemp(prefix='dce-book-')}/ledger.db", "EXCHANGE_BOOK_SAVE_MS": "50"}
    server = start_server(env)
    try:
        _, buyer_key = server.account("buyer", "slot-buyer", deposit=1_000_000)
        _, pub_key = server.account("publisher", "slot-pub")
        auth = {"Authorization": f"Bearer {pub_key}"}
        b = Buyer(server.ws_url, buyer_key)
        assert isinstance(b.request(lambda s: Campaign(id="one", vertical="solar", bid_cents=2000, destination="+18005550199",
                                                       min_duration_s=60, caps=Caps(concurrency=1), seq=s)), Ack)
        wait_saved(server, 1)
        first = call(server, auth, "solar", "+14155550201")
        assert first["decision"] == "routed"
        r = server.http.post(f"/v1/calls/{first['call_id']}/events", json={"event": "connected"},
                             headers={**auth, "Idempotency-Key": "c1"})  # an event is answered once durable
        assert r.status_code == 200, r.text
        b.close()
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
    finally:
        stop_server(server)
    server = start_server(env)
    try:
        assert call(server, auth, "solar", "+14155550202")["reason"] == "no_eligible_bid"  # its one slot is the recovered leg's
        r = server.http.post(f"/v1/calls/{first['call_id']}/events", json={"event": "completed", "duration_s": 90},
                             headers={**auth, "Idempotency-Key": "c2"})
        assert r.status_code == 200 and r.json()["billable"], r.text
        assert call(server, auth, "solar", "+14155550203")["decision"] == "routed"  # the slot is free again
    finally:
        stop_server(server)


def test_caps_and_budget_count_the_calls_delivered_before_a_restart() -> None:
    env = {"EXCHANGE_DATABASE_URL": f"sqlite:///{tempfile.mkdtemp(prefix='dce-book-')}/ledger.db"}
    server = start_server(env)
    try:
        _, buyer_key = server.account("buyer", "cap-buyer", deposit=1_000_000)
        _, pub_key = server.account("publisher", "cap-pub")
        auth = {"Authorization": f"Bearer {pub_key}"}
        b = Buyer(server.ws_url, buyer_key)
        for cid, vertical, kw in (("daily", "solar", {"caps": Caps(daily=1)}), ("budget", "hvac", {"daily_budget_cents": 3000})):
            assert isinstance(b.request(lambda s, c=cid, v=vertical, k=kw: Campaign(
                id=c, vertical=v, bid_cents=2000, destination="+18005550199", min_duration_s=60, seq=s, **k)), Ack)
        for vertical, caller in (("solar", "+14155550301"), ("hvac", "+14155550302")):
            d = call(server, auth, vertical, caller)
            assert d["decision"] == "routed", d
            r = server.http.post(f"/v1/calls/{d['call_id']}/events", json={"event": "completed", "duration_s": 90},
                                 headers={**auth, "Idempotency-Key": caller})
            assert r.status_code == 200 and r.json()["billable"], r.text
        b.close()
    finally:
        stop_server(server)  # graceful: the book saved at shutdown
    server = start_server(env)
    try:
        assert call(server, auth, "solar", "+14155550303")["reason"] == "no_eligible_bid"  # 1 of 1 today, before the restart
        assert call(server, auth, "hvac", "+14155550304")["reason"] == "no_eligible_bid"  # 2000 spent: another 2000 is over 3000
    finally:
        stop_server(server)
