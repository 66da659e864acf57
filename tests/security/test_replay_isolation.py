"""Tenant isolation of the auction replay and the dashboard's stream, on a real server: a buyer
reads only its own candidates of a call it was considered for (and the clearing price), nothing
of a call it was not; a publisher may not read a replay; a dashboard stream carries only the
signed-in tenant's data."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from exchange.messages import Campaign
from tests.e2e.conftest import ADMIN, Server, stop_server
from tests.e2e.wsclient import Buyer
from tests.security.kit import Tenants, bearer, make_tenants, start

pytestmark = pytest.mark.e2e
V = "sec_replay"


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Server, Tenants, dict, dict]]:
    server, _ = start()
    socks = []
    try:
        t = make_tenants(server, "replay")
        for who, bid in ((t.a, 3000), (t.b, 2000)):
            ws = Buyer(server.ws_url, who.key)
            socks.append(ws)
            ack = ws.request(lambda q, bid=bid: Campaign(id="mine", vertical=V, bid_cents=bid, destination="+18005550199", min_duration_s=30, seq=q))
            assert type(ack).__name__ == "Ack", ack
        shared = server.http.post("/v1/calls", json={"caller": "+13125550142", "vertical": V}, headers=t.p1.auth).json()
        assert shared["route"]["buyer"] == t.a.id, shared
        nobody = server.http.post("/v1/calls", json={"caller": "+13125550143", "vertical": "sec_nobody"}, headers=t.p2.auth).json()
        assert nobody["decision"] == "rejected"
        yield server, t, shared, nobody
    finally:
        for ws in socks:
            ws.close()
        stop_server(server)


def test_an_auction_replay_shows_a_buyer_its_own_candidates_only(world):
    server, t, shared, nobody = world
    http = server.http

    def replay(call: str, key: str):
        return http.get(f"/v1/calls/{call}/auction", headers=bearer(key))

    everyone = replay(shared["call_id"], ADMIN).json()
    assert {c["buyer"] for c in everyone["candidates"]} == {t.a.id, t.b.id}
    for me, other in ((t.a, t.b), (t.b, t.a)):
        r = replay(shared["call_id"], me.key)
        assert r.status_code == 200, r.text
        body = r.json()
        assert {c["buyer"] for c in body["candidates"]} == {me.id}
        assert other.id not in r.text and other.key not in r.text and "3125550142" not in r.text
        assert body["clearing_price_cents"] == everyone["clearing_price_cents"]
        assert sum(body["ineligible_counts"].values()) == 0
    # a call no buyer was considered for: as if it did not exist (the same answer as an unknown id)
    for key in (t.a.key, t.b.key):
        r = replay(nobody["call_id"], key)
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_call"
        ghost = "call_" + "0" * 16
        assert replay(ghost, key).json()["error"]["message"].replace(ghost, nobody["call_id"]) == r.json()["error"]["message"]
    # publishers may not read replays, not even of their own calls
    for p in (t.p1, t.p2):
        r = replay(shared["call_id"], p.key)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def _first_snapshot(server: Server, key: str) -> tuple[dict, str]:
    with server.http.stream("GET", "/v1/dashboard/stream?interval_ms=200", headers=bearer(key)) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                return json.loads(line[6:]), line
    raise AssertionError("no snapshot")


def test_a_dashboard_stream_shows_a_tenant_its_own_data_only(world):
    server, t, shared, _ = world
    snap, raw = _first_snapshot(server, t.b.key)
    assert snap["kind"] == "buyer" and snap["account"] == t.b.id
    assert [c["key"] for c in snap["top"]["campaigns"]] == ["mine"]
    assert t.a.id not in raw and t.p1.id not in raw and t.p2.id not in raw and "market" not in snap
    assert snap["totals"]["payout_cents"] is None and snap["totals"]["margin_cents"] is None  # not a buyer's to see
    snap, raw = _first_snapshot(server, t.p2.key)  # a publisher whose only call nobody bought
    assert snap["kind"] == "publisher" and snap["top"]["buyers"] == []
    assert t.a.id not in raw and t.b.id not in raw and t.p1.id not in raw and shared["call_id"] not in raw
    assert snap["totals"]["revenue_cents"] is None and snap["totals"]["margin_cents"] is None
    snap, raw = _first_snapshot(server, t.p1.key)  # its buyers by name: the buyers of its own calls only
    assert [b["key"] for b in snap["top"]["buyers"]] == [t.a.id] and t.b.id not in raw and t.p2.id not in raw
