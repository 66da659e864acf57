"""A node killed with SIGKILL: its buyers' presence goes with it (``cancel_on_disconnect``
campaigns held out at the seller), they reconnect to another node and sell again; a seller
killed and restarted after its lease lapsed takes the market back with the saved book and the
edges' buyers."""

from __future__ import annotations

import signal

import redis

from exchange.messages import Ack, Campaign, Ping, Pong, Win
from tests.cluster.conftest import REDIS_URL, Market, start_node, submit, until
from tests.e2e.conftest import Server, stop_server
from tests.e2e.wsclient import Buyer


def kill(server: Server) -> None:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    stop_server(server)


def cod(s: int) -> Campaign:
    return Campaign(id="cod", vertical="solar", bid_cents=2500, destination="+18005550199", min_duration_s=30,
                    cancel_on_disconnect=True, seq=s)


def test_an_edge_killed_takes_its_buyers_presence_with_it_and_they_come_back_elsewhere(market: Market) -> None:
    seller = start_node(market, "s")
    edge = start_node(market, "e")
    try:
        # (enough for every call routed while the seller still counts the dead edge's socket: each holds its price)
        _, buyer_key = seller.account("buyer", "moving-buyer", deposit=10_000_000)
        _, pub_key = seller.account("publisher", "steady-pub")
        auth = {"Authorization": f"Bearer {pub_key}"}
        b = Buyer(edge.ws_url, buyer_key)
        assert isinstance(b.request(cod), Ack)
        until(lambda: submit(seller, auth, "+14155550301")["decision"] == "routed", what="the campaign at the seller")
        kill(edge)  # its socket and its presence hash die with it
        until(lambda: submit(seller, auth, "+14155550302")["reason"] == "no_eligible_bid", what="the buyer gone")
        b2 = Buyer(seller.ws_url, buyer_key)  # the buyer reconnects to another node: its campaigns are in the store
        assert isinstance(b2.request(lambda s: Ping(seq=s)), Pong)
        # (the dead edge's presence may still be swept after the reconnect: the campaign is back within the sweep)
        d = until(lambda: (x := submit(seller, auth, "+14155550303"))["decision"] == "routed" and x, what="the buyer back at the seller")
        assert d["route"]["campaign"] == "cod", (d, seller.log()[-3000:])
        assert b2.wait_for(lambda m: isinstance(m, Win) and m.call_id == d["call_id"]).campaign == "cod"
        b2.close()
    finally:
        stop_server(edge)
        stop_server(seller)


def test_a_seller_killed_and_restarted_takes_the_market_back(market: Market) -> None:
    seller = start_node(market, "s")
    edge = start_node(market, "e")
    r = redis.Redis.from_url(REDIS_URL)
    try:
        _, buyer_key = seller.account("buyer", "loyal-buyer", deposit=100_000)
        _, pub_key = seller.account("publisher", "patient-pub")
        auth = {"Authorization": f"Bearer {pub_key}"}
        b = Buyer(edge.ws_url, buyer_key)
        assert isinstance(b.request(cod), Ack)
        until(lambda: submit(seller, auth, "+14155550401")["decision"] == "routed", what="the campaign at the seller")
        kill(seller)
        refused = edge.http.post("/v1/calls", json={"caller": "+14155550402", "vertical": "solar"}, headers=auth)
        assert refused.status_code == 503 and refused.json()["error"]["code"] in ("seller_unreachable", "not_seller")  # closed
        until(lambda: not r.exists(f"{market.name}:seller") and not r.exists(f"{market.name}:node:s"), what="the leases lapsed")
        seller = start_node(market, "s")
        assert seller.http.get("/readyz").json()["role"] == "seller"
        d = until(lambda: (x := submit(seller, auth, "+14155550403"))["decision"] == "routed" and x, what="the buyer on the edge")
        assert d["route"]["campaign"] == "cod"
        assert b.wait_for(lambda m: isinstance(m, Win) and m.call_id == d["call_id"]).campaign == "cod"
        b.close()
    finally:
        r.close()
        stop_server(edge)
        stop_server(seller)
