"""A node killed with SIGKILL: its buyers' presence goes with it (``cancel_on_disconnect``
campaigns held out at the seller), they reconnect to another node and sell again; a seller
killed is replaced by an edge that takes the market over (its lease lapsed)."""

from __future__ import annotations

import signal

import redis

from exchange.messages import Ack, Campaign, Ping, Pong, Win
from tests.cluster.conftest import books_exact, role, REDIS_URL, Market, start_node, submit, until
from tests.e2e.conftest import ADMIN, Server, stop_server
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


def test_a_seller_killed_is_replaced_by_an_edge_that_takes_the_market_over(market: Market) -> None:
    """SIGKILL of the seller: the edge takes the lapsed seller's lease, replaces its process with
    a seller that raises the epoch (fencing the dead one) and rebuilds from PostgreSQL: the call
    the dead seller had in flight completes and is billed once, a keyed call retried gets the same
    call, the buyer reconnects and sells, and the money reconciles."""
    seller = start_node(market, "s")
    edge = start_node(market, "e")
    r = redis.Redis.from_url(REDIS_URL)
    try:
        buyer_id, buyer_key = seller.account("buyer", "loyal-buyer", deposit=100_000)
        _, pub_key = seller.account("publisher", "patient-pub")
        auth = {"Authorization": f"Bearer {pub_key}"}
        b = Buyer(edge.ws_url, buyer_key)
        assert isinstance(b.request(lambda s: Campaign(id="stay", vertical="solar", bid_cents=2500, destination="+18005550199",
                                                       min_duration_s=30, seq=s)), Ack)
        flying = until(lambda: (x := submit(seller, auth, "+14155550401"))["decision"] == "routed" and x, what="the campaign at the seller")
        assert seller.http.post(f"/v1/calls/{flying['call_id']}/events", json={"event": "connected"},
                                 headers={**auth, "Idempotency-Key": "up"}).status_code == 200
        keyed = seller.http.post("/v1/calls", json={"caller": "+14155550402", "vertical": "solar", "state": "CA"},
                                 headers={**auth, "Idempotency-Key": "before-the-fall"})
        assert keyed.status_code == 200, keyed.text
        kill(seller)
        refused = edge.http.post("/v1/calls", json={"caller": "+14155550403", "vertical": "solar"}, headers=auth)
        assert refused.status_code == 503 and refused.json()["error"]["code"] in ("seller_unreachable", "not_seller")  # closed
        until(lambda: role(edge) == "seller", timeout_s=40, what="the edge become the seller")
        assert "restarting this node to join its market again (as the seller)" in edge.log()
        assert r.exists(f"{market.name}:seller")
        b.close()  # its socket closed with the edge's old process: it reconnects
        done = edge.http.post(f"/v1/calls/{flying['call_id']}/events", json={"event": "completed", "duration_s": 95},
                              headers={**auth, "Idempotency-Key": "done"})
        assert done.status_code == 200 and done.json()["billable"] is True, done.text
        again = edge.http.post(f"/v1/calls/{flying['call_id']}/events", json={"event": "completed", "duration_s": 95},
                               headers={**auth, "Idempotency-Key": "done"})
        assert again.json() == done.json()
        retried = edge.http.post("/v1/calls", json={"caller": "+14155550402", "vertical": "solar", "state": "CA"},
                                 headers={**auth, "Idempotency-Key": "before-the-fall"})
        assert retried.status_code == 200 and retried.json()["call_id"] == keyed.json()["call_id"], retried.text
        b2 = Buyer(edge.ws_url, buyer_key)
        assert isinstance(b2.request(lambda s: Ping(seq=s)), Pong)
        d = until(lambda: (x := submit(edge, auth, "+14155550404"))["decision"] == "routed" and x, what="the buyer at the new seller")
        assert d["route"]["campaign"] == "stay"
        assert b2.wait_for(lambda m: isinstance(m, Win) and m.call_id == d["call_id"]).campaign == "stay"
        b2.close()
        statement = edge.http.get(f"/v1/accounts/{buyer_id}/statement", headers={"Authorization": f"Bearer {ADMIN}"})
        assert statement.status_code == 200, statement.text
        charges = [ln for ln in statement.json()["lines"] if ln["reference"] == flying["call_id"] and ln["kind"] == "charge"]
        assert len(charges) == 1, statement.json()
    finally:
        r.close()
        stop_server(edge)
        stop_server(seller)
    books_exact(market.database_url)
