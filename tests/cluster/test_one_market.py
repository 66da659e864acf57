"""One market on two real nodes (two ``python -m exchange serve`` processes on one PostgreSQL
schema and one Redis market prefix): a buyer connected to the edge has its campaigns in the
seller's book, wins a call submitted at the seller and gets its ``win`` on its socket at the
edge; its reprices and RTB answers count; ``cancel_on_disconnect`` follows its socket on the
other node; money reconciles."""

from __future__ import annotations

import os
import subprocess
import sys

from exchange.messages import Ack, BidRequest, Bid, Campaign, Ping, Pong, RtbBid, Win
from tests.cluster.conftest import ROOT, Market, start_node, submit, until
from tests.e2e.conftest import ADMIN, stop_server
from tests.e2e.wsclient import Buyer


def camp(cid: str, vertical: str, bid: int, **kw):
    return lambda s: Campaign(id=cid, vertical=vertical, bid_cents=bid, destination="+18005550199", min_duration_s=30, seq=s, **kw)


def test_a_buyer_on_one_node_wins_a_call_submitted_at_another(market: Market) -> None:
    seller = start_node(market, "seller")
    edge = start_node(market, "edge")
    try:
        assert (seller.http.get("/readyz").json()["role"], edge.http.get("/readyz").json()["role"]) == ("seller", "edge")
        buyer_id, buyer_key = seller.account("buyer", "far-buyer", deposit=100_000)  # made after the edge started
        _, pub_key = seller.account("publisher", "near-pub")
        auth = {"Authorization": f"Bearer {pub_key}"}
        b = Buyer(edge.ws_url, buyer_key)  # the edge reads the key from the store
        assert isinstance(b.request(camp("far", "solar", 2500, cancel_on_disconnect=True)), Ack)
        assert isinstance(b.request(camp("live", "hvac", 100, rtb=True)), Ack)

        d = until(lambda: (x := submit(seller, auth, "+14155550111", "solar"))["decision"] == "routed" and x, what="the campaign at the seller")
        assert d["route"]["campaign"] == "far" and d["route"]["payout_cents"] == 2000
        win = b.wait_for(lambda m: isinstance(m, Win) and m.call_id == d["call_id"])
        assert (win.campaign, win.price_cents) == ("far", 2500)  # the notice crossed to the buyer's socket on the edge

        b.send(Bid(campaign="far", bid_cents=3000))  # a reprice at the edge counts at the seller
        until(lambda: submit(seller, auth, "+14155550112", "solar")["route"]["payout_cents"] == 2400, what="the reprice")

        rtb_call: dict = {}

        def answer_rtb() -> None:  # the seller's bid_request reaches the buyer on the edge; its answer counts
            q = b.wait_for(lambda m: isinstance(m, BidRequest))
            b.send(RtbBid(request_id=q.request_id, bid_cents=1700))

        import threading
        t = threading.Thread(target=lambda: rtb_call.update(submit(seller, auth, "+14155550113", "hvac")))
        t.start()
        answer_rtb()
        t.join(10)
        assert rtb_call["decision"] == "routed" and rtb_call["route"]["campaign"] == "live", rtb_call
        assert rtb_call["route"]["payout_cents"] == 1360

        for event, body in (("connected", {"event": "connected"}), ("completed", {"event": "completed", "duration_s": 60})):
            r = seller.http.post(f"/v1/calls/{d['call_id']}/events", json=body, headers={**auth, "Idempotency-Key": f"{d['call_id']}-{event}"})
            assert r.status_code == 200, r.text
        assert r.json()["charged_cents"] == 2500
        via_edge = submit(edge, auth, "+14155550114", "solar")  # a call at the edge: forwarded, decided by the seller
        assert via_edge["decision"] == "routed" and via_edge["route"]["campaign"] == "far"
        assert b.wait_for(lambda m: isinstance(m, Win) and m.call_id == via_edge["call_id"]).price_cents == 3000
        r = edge.http.post(f"/v1/calls/{via_edge['call_id']}/events", json={"event": "completed", "duration_s": 5},
                           headers={**auth, "Idempotency-Key": "short-1"})
        assert r.status_code == 200 and r.json()["billable"] is False, r.text

        assert isinstance(b.request(lambda s: Ping(seq=s)), Pong)
        b.close()  # its only socket, on the edge: cancel_on_disconnect holds "far" out at the seller
        until(lambda: submit(seller, auth, "+14155550115", "solar")["reason"] == "no_eligible_bid", what="the campaign held out")
        b = Buyer(edge.ws_url, buyer_key)
        until(lambda: submit(seller, auth, "+14155550116", "solar")["decision"] == "routed", what="the campaign back")
        b.close()
        assert buyer_id
    finally:
        stop_server(edge)
        stop_server(seller)
    env = {**os.environ, "EXCHANGE_DATABASE_URL": market.database_url}
    rec = subprocess.run([sys.executable, "-m", "exchange", "billing", "reconcile"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert rec.returncode == 0, rec.stdout + rec.stderr


def test_a_publisher_socket_at_an_edge_is_relayed_to_the_seller(market: Market) -> None:
    """Calls sent over an edge's publisher WebSocket are decided by the seller and answered on
    the same socket (a batch, a ping, a bad item with its error), in either subprotocol."""
    import json

    import msgpack
    from websockets.sync.client import connect

    seller = start_node(market, "seller")
    edge = start_node(market, "edge")
    try:
        _, buyer_key = seller.account("buyer", "ws-buyer", deposit=100_000)
        _, pub_key = seller.account("publisher", "ws-pub")
        b = Buyer(seller.ws_url, buyer_key)
        assert isinstance(b.request(camp("wsc", "solar", 2500)), Ack)
        auth = {"Authorization": f"Bearer {pub_key}"}
        until(lambda: submit(seller, auth, "+14155550201", "solar")["decision"] == "routed", what="the campaign")
        with connect(f"{edge.ws_url}/v1/publishers/ws", additional_headers=auth) as ws:
            ws.send(json.dumps([{"type": "call", "caller": "+14155550202", "vertical": "solar", "state": "CA", "seq": 1},
                                {"type": "call", "caller": "not a number", "vertical": "solar", "seq": 2},
                                {"type": "ping", "seq": 3}]))
            got: dict[int, dict] = {}
            while len(got) < 3:
                for m in (lambda x: x if isinstance(x, list) else [x])(json.loads(ws.recv(timeout=10))):
                    got[m["seq"]] = m
            assert got[1]["type"] == "decision" and got[1]["decision"] == "routed" and got[1]["route"]["campaign"] == "wsc", got
            assert got[2]["type"] == "error" and got[2]["code"] == "invalid_number", got
            assert got[3]["type"] == "pong"
        with connect(f"{edge.ws_url}/v1/publishers/ws", additional_headers=auth, subprotocols=["dce.msgpack.v1"]) as ws:
            ws.send(msgpack.packb({"type": "call", "caller": "+14155550203", "vertical": "solar", "state": "CA", "seq": 7}))
            m = msgpack.unpackb(ws.recv(timeout=10))
            m = m[0] if isinstance(m, list) else m
            assert m["type"] == "decision" and m["seq"] == 7 and m["decision"] == "routed", m
        calls = seller.http.get("/v1/calls", headers=auth).json()
        assert len(calls["calls"]) >= 3, calls  # the seller holds the calls sent at the edge (and the one sent to it)
        b.close()
    finally:
        stop_server(edge)
        stop_server(seller)


def test_a_large_upload_at_an_edge_streams_to_the_seller_and_small_bodies_go_whole(market: Market) -> None:
    """A DNC file of ~1.1 MB sent to an edge reaches the seller whole (the edge streams it on as
    it comes, chunked); a call's small body is forwarded with its length."""
    from datetime import UTC, datetime

    seller = start_node(market, "seller")
    edge = start_node(market, "edge")
    try:
        numbers = [f"212{n:07d}" for n in range(5550000, 5650000)]  # 100,000 lines
        today = datetime.now(UTC).date().isoformat()
        r = edge.http.post(f"/v1/dnc/national?snapshot_date={today}", content=("\n".join(numbers) + "\n").encode(),
                           headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
        assert r.status_code == 201, r.text
        assert (r.json()["numbers"], r.json()["rejected"]) == (len(numbers), 0)
        _, pub_key = seller.account("publisher", "up-pub")
        d = submit(edge, {"Authorization": f"Bearer {pub_key}"}, "+14155550301")
        assert d["decision"] == "rejected" and d["reason"] == "no_eligible_bid", d  # decided at the seller, the body whole
    finally:
        stop_server(edge)
        stop_server(seller)
