"""Redis restarted under a market of two real nodes, each in its own network namespace (a private
redis-server, killed and started again empty on the same port): while it is down the nodes fail closed with a clear reason once
their leases can no longer be trusted (``503 node_stale``); when it is back, exactly one node
sells again (the leases are taken again; a seller that finds its lease taken by the other node is
replaced by a process that joins as an edge, fenced out of the ledger by the new seller's epoch),
the saved book sells, and the money reconciles."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest

from exchange.messages import Ack, Campaign
from tests.cluster.conftest import books_exact, role, Market, redis_client, start_node, until
from tests.cluster.netns import fabric
from tests.e2e.conftest import Server, free_port, redis_server, stop_server
from tests.e2e.wsclient import Buyer


def call(server: Server, auth: dict[str, str], caller: str) -> httpx.Response | None:
    try:
        return server.http.post("/v1/calls", json={"caller": caller, "vertical": "solar", "state": "CA"}, headers=auth)
    except httpx.HTTPError:
        return None


def test_redis_restarted_under_two_nodes_fails_closed_then_one_seller_sells_again(market: Market) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    redis_proc = redis_server(port)
    with fabric(["s", "e"], [5432, port]) as fab:  # each node in its own network namespace
        gw = fab.gateway
        m = market._replace(database_url=market.database_url.replace("127.0.0.1", gw), redis_url=f"redis://{gw}:{port}/0")
        nodes = [start_node(m, name, host=fab.addr[name], prefix=fab.prefix(name)) for name in ("s", "e")]
        redis_proc = redis_restarted(nodes, redis_proc, port)
    books_exact(market.database_url)


def redis_restarted(nodes: list[Server], redis_proc: subprocess.Popen, port: int) -> subprocess.Popen:
    buyer: Buyer | None = None
    try:
        seller = nodes[0]
        _, buyer_key = seller.account("buyer", "steady", deposit=200_000)
        _, pub_key = seller.account("publisher", "steady-pub")
        auth = {"Authorization": f"Bearer {pub_key}"}
        buyer = Buyer(seller.ws_url, buyer_key)
        assert isinstance(buyer.request(lambda s: Campaign(id="keep", vertical="solar", bid_cents=2000, destination="+18005550199",
                                                           min_duration_s=30, seq=s)), Ack)
        until(lambda: (r := call(seller, auth, "+14155551001")) is not None and r.json().get("decision") == "routed",
              what="the campaign at the seller")
        redis_proc.kill()
        redis_proc.wait(5)
        # fail closed: once the lease's trusted window has passed, the seller refuses calls and says why
        stale = until(lambda: (r := call(seller, auth, "+14155551002")) is not None and r.status_code == 503 and r, timeout_s=20,
                      what="the seller stale")
        assert stale.json()["error"]["code"] == "node_stale", stale.text
        assert seller.http.get("/readyz").status_code == 503
        redis_proc = redis_server(port)  # back, empty
        sellers = until(lambda: (got := [n for n in nodes if role(n) == "seller"]) and len(got) == 1 and
                        all(role(n) in ("seller", "edge") for n in nodes) and got, timeout_s=40, what="one seller again")
        new = sellers[0]
        d = until(lambda: (r := call(new, auth, "+14155551003")) is not None and r.status_code == 200
                  and r.json().get("decision") == "routed" and r.json(), timeout_s=20, what="calls routed again")
        assert d["route"]["campaign"] == "keep"
        other = next(n for n in nodes if n is not new)
        assert role(other) == "edge"
    finally:
        if buyer is not None:
            buyer.close()
        for n in nodes:
            stop_server(n)
        redis_proc.kill()
        redis_proc.wait(5)
    return redis_proc


def test_a_seller_whose_lease_another_process_took_steps_down_and_the_market_sells_again(market: Market) -> None:
    """The seller's lease is overwritten behind its back (what a process that took it after a Redis
    restart, or after this seller stalled past its TTL, looks like): the seller notices at its next
    renewal, stops selling and is replaced by a process that joins as an edge; when the usurper's
    lease lapses without it ever selling, an edge takes the market over."""
    nodes = [start_node(market, "s"), start_node(market, "e")]
    r = redis_client()
    try:
        seller = nodes[0]
        _, pub_key = seller.account("publisher", "usurped-pub")
        auth = {"Authorization": f"Bearer {pub_key}"}
        assert call(seller, auth, "+14155551101").status_code == 200
        r.set(f"{market.name}:seller", "usurper|{}", px=4000)
        until(lambda: "seller_lease_taken" in seller.log(), timeout_s=10, what="the seller notice")
        until(lambda: role(seller) == "edge" or (role(nodes[1]) == "seller" and role(seller) == "edge"), timeout_s=40,
              what="the old seller back as an edge")
        assert "restarting this node to join its market again (as an edge)" in seller.log()
        new = until(lambda: next((n for n in nodes if role(n) == "seller"), None), timeout_s=40, what="a seller again")
        assert [role(n) for n in nodes].count("seller") == 1
        assert until(lambda: (x := call(new, auth, "+14155551102")) is not None and x.status_code == 200, timeout_s=20, what="calls")
    finally:
        r.close()
        for n in nodes:
            stop_server(n)
