"""Faults between real nodes in network namespaces of their own (``tests/cluster/netns.py``): the
seller cut off from the rest of the market (its veth down) fails closed on its side of the
partition (``503 node_stale``: it cannot prove its lease); an edge takes the market over, and the
campaign's daily cap and the buyer's money stay exact across both sellers; healed, the old seller
finds its lease taken and comes back as an edge, fenced out of the ledger by the new seller's
epoch. ``billing reconcile`` and ``audit verify`` pass."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

from exchange.messages import Ack, Campaign, Caps
from tests.cluster.conftest import books_exact, role, Market, start_node, until
from tests.cluster.netns import Fabric, fabric
from tests.e2e.conftest import ADMIN, Server, stop_server
from tests.e2e.wsclient import Buyer

CAP = 4


def inside(fab: Fabric, name: str, url: str, body: dict, headers: dict) -> tuple[int, str]:
    """POST from inside namespace ``name`` (its side of a partition): (status, body); 0 if unreachable."""
    code = ("import httpx, json, sys\n"
            "try:\n r = httpx.post(sys.argv[1], json=json.loads(sys.argv[2]), headers=json.loads(sys.argv[3]), timeout=5)\n"
            " print(r.status_code); print(r.text)\n"
            "except httpx.HTTPError as e:\n print(0); print(repr(e))\n")
    out = subprocess.run([*fab.prefix(name), sys.executable, "-c", code, url, json.dumps(body), json.dumps(headers)],
                         capture_output=True, text=True, timeout=30)
    status, _, text = out.stdout.partition("\n")
    return int(status or 0), text


def route_and_complete(node: Server, auth: dict[str, str], caller: str) -> dict | None:
    """A call at ``node``: routed, connected and completed billable (its decision), or None if refused."""
    r = node.http.post("/v1/calls", json={"caller": caller, "vertical": "solar", "state": "CA"}, headers={**auth, "Idempotency-Key": caller})
    assert r.status_code == 200, r.text
    d = r.json()
    if d["decision"] != "routed":
        return None
    for n, ev in enumerate(({"event": "connected"}, {"event": "completed", "duration_s": 95})):
        e = node.http.post(f"/v1/calls/{d['call_id']}/events", json=ev, headers={**auth, "Idempotency-Key": f"{caller}-{n}"})
        assert e.status_code == 200, e.text
    return d


def test_the_seller_cut_off_fails_closed_an_edge_sells_and_the_healed_seller_returns_as_an_edge(market: Market) -> None:
    with fabric(["s", "e"], [5432, 6379]) as fab:
        gw = fab.gateway
        m = market._replace(database_url=market.database_url.replace("127.0.0.1", gw), redis_url=market.redis_url.replace("127.0.0.1", gw))
        seller = start_node(m, "s", host=fab.addr["s"], prefix=fab.prefix("s"))
        edge = start_node(m, "e", host=fab.addr["e"], prefix=fab.prefix("e"))
        buyer: Buyer | None = None
        try:
            buyer_id, buyer_key = seller.account("buyer", "partitioned-buyer", deposit=50_000)
            _, pub_key = seller.account("publisher", "partitioned-pub")
            auth = {"Authorization": f"Bearer {pub_key}"}
            buyer = Buyer(edge.ws_url, buyer_key)
            assert isinstance(buyer.request(lambda s: Campaign(id="capped", vertical="solar", bid_cents=2000, destination="+18005550199",
                                                               min_duration_s=30, caps=Caps(concurrency=1, daily=CAP), seq=s)), Ack)
            tries = itertools.count(1000)
            until(lambda: route_and_complete(seller, auth, f"+1415555{next(tries):04d}"), what="the first call sold")
            delivered = 1

            fab.cut("s")
            stale = until(lambda: (x := inside(fab, "s", f"{seller.url}/v1/calls", {"caller": "+14155552001", "vertical": "solar"}, auth))[0] == 503
                          and x, timeout_s=30, what="the cut-off seller failing closed")
            assert json.loads(stale[1])["error"]["code"] == "node_stale", stale
            until(lambda: role(edge) == "seller", timeout_s=40, what="the edge taking the market over")
            buyer.close()
            buyer = Buyer(edge.ws_url, buyer_key)  # its socket closed with the edge's old process
            for i in range(CAP + 2):
                if route_and_complete(edge, auth, f"+141555530{i:02d}"):
                    delivered += 1
            assert delivered == CAP  # the cap counted what the old seller delivered, and held at the new one

            fab.heal("s")
            until(lambda: role(seller) == "edge", timeout_s=40, what="the old seller back as an edge")
            assert "restarting this node to join its market again (as an edge)" in seller.log()
            assert role(edge) == "seller"
            st = edge.http.get(f"/v1/accounts/{buyer_id}/statement", headers={"Authorization": f"Bearer {ADMIN}"}).json()
            assert [ln["kind"] for ln in st["lines"]].count("charge") == CAP
            assert st["closing_balance_cents"] == 50_000 - CAP * 2000  # nothing charged twice, nothing spent past the cap
        finally:
            if buyer is not None:
                buyer.close()
            stop_server(edge)
            stop_server(seller)
    books_exact(market.database_url)
