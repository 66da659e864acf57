"""The auction replay over a real server: GET /v1/calls/{id}/auction as the operator, the
buyers and a publisher see it, from memory and, after a restart, from the audit trail."""

from __future__ import annotations

import tempfile

from exchange.messages import Campaign
from tests.e2e.conftest import start_server, stop_server
from tests.e2e.wsclient import Buyer

V = "auc_auto"


def _campaign(ws: Buyer, cid: str, bid: int, **kw) -> None:
    ack = ws.request(lambda q: Campaign(id=cid, vertical=V, bid_cents=bid, destination="+18005550199", min_duration_s=60, seq=q, **kw))
    assert type(ack).__name__ == "Ack", ack


def test_replay_of_a_routed_and_a_rejected_call_for_each_reader():
    db = f"sqlite:///{tempfile.mkdtemp(prefix='dce-auc-')}/ledger.db"
    s = start_server({"EXCHANGE_DATABASE_URL": db, "EXCHANGE_PRICING": "second"})
    try:
        a_id, a_key = s.account("buyer", "auc-a", deposit=100_000)
        b_id, b_key = s.account("buyer", "auc-b", deposit=100_000)
        c_id, c_key = s.account("buyer", "auc-c", deposit=100_000)
        d_id, d_key = s.account("buyer", "auc-d")  # no funds
        e_id, e_key = s.account("buyer", "auc-e", deposit=100_000)  # another vertical: never a candidate
        p_id, p_key = s.account("publisher", "auc-p")
        socks = [Buyer(s.ws_url, k) for k in (a_key, b_key, c_key, d_key, e_key)]
        _campaign(socks[0], "a1", 3000)
        _campaign(socks[1], "b1", 2000)
        _campaign(socks[2], "c1", 5000, area_codes=[415])  # walked (the best bid) and refused: the call is from 212
        _campaign(socks[3], "d1", 9000)  # parked on arrival: its buyer cannot cover the bid
        ack = socks[4].request(lambda q: Campaign(id="e1", vertical="auc_other", bid_cents=9000, destination="+18005550199", min_duration_s=60, seq=q))
        assert type(ack).__name__ == "Ack"
        pub = {"Authorization": f"Bearer {p_key}"}
        d = s.http.post("/v1/calls", json={"caller": "+12125550123", "vertical": V, "floor_cents": 1000}, headers=pub).json()
        assert d["decision"] == "routed" and d["route"]["buyer"] == a_id, d
        call_id = d["call_id"]
        nobody = s.http.post("/v1/calls", json={"caller": "+12125550124", "vertical": V, "floor_cents": 20_000}, headers=pub).json()
        assert nobody["reason"] == "below_floor", nobody

        def read(call: str, key: str):
            return s.http.get(f"/v1/calls/{call}/auction", headers={"Authorization": f"Bearer {key}"})

        def check_all() -> None:
            r = read(call_id, s.admin["Authorization"].split()[1])
            assert r.status_code == 200, r.text
            v = r.json()
            got = {c["campaign"]: (c["outcome"], c.get("reason")) for c in v["candidates"]}
            assert got == {"a1": ("won", None), "b1": ("fallback", None), "c1": ("ineligible", "area_code"), "d1": ("ineligible", "funds")}, v
            assert v["ineligible_counts"] == {"area_code": 1, "funds": 1}
            assert v["clearing_price_cents"] == 2001 and v["floor_cents"] == 1000 and v["pricing"] == "second"
            # a losing buyer: its own candidate and the clearing price, nothing of the others
            r = read(call_id, b_key)
            assert r.status_code == 200, r.text
            v = r.json()
            assert [c["campaign"] for c in v["candidates"]] == ["b1"] and v["clearing_price_cents"] == 2001
            assert a_id not in r.text and c_id not in r.text
            assert read(call_id, d_key).json()["candidates"] == [
                {"buyer": d_id, "campaign": "d1", "bid_cents": 9000, "outcome": "ineligible", "reason": "funds"}]
            r = read(call_id, e_key)  # never considered: as if there were no such call
            assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_call"
            r = read(call_id, p_key)
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
            r = read("call_nope", s.admin["Authorization"].split()[1])
            assert r.status_code == 404
            v = read(nobody["call_id"], a_key).json()  # rejected: everyone below the floor
            assert v["decision"] == "rejected" and v["candidates"] == [
                {"buyer": a_id, "campaign": "a1", "bid_cents": 3000, "outcome": "below_floor"}]

        check_all()
        done = s.http.post(f"/v1/calls/{call_id}/events", json={"event": "completed", "duration_s": 90},
                           headers={**pub, "Idempotency-Key": "auc-k1"})
        assert done.status_code == 200, done.text
        for ws in socks:
            ws.close()
    finally:
        stop_server(s)
    s = start_server({"EXCHANGE_DATABASE_URL": db, "EXCHANGE_PRICING": "second"})  # the calls are no longer in memory
    try:
        check_all()
    finally:
        stop_server(s)


def test_live_bidders_that_declined_or_stayed_silent():
    import threading

    from exchange.messages import NoBid

    s = start_server({"EXCHANGE_RTB_TMAX_MS": "300"})
    try:
        _, d_key = s.account("buyer", "rtb-decliner", deposit=100_000)
        _, q_key = s.account("buyer", "rtb-silent", deposit=100_000)
        _, o_key = s.account("buyer", "rtb-other", deposit=100_000)
        _, p_key = s.account("publisher", "rtb-p")
        decliner, silent = Buyer(s.ws_url, d_key), Buyer(s.ws_url, q_key)
        for ws, cid in ((decliner, "live-d"), (silent, "live-s")):
            ack = ws.request(lambda q, cid=cid: Campaign(id=cid, vertical="auc_live", bid_cents=0, rtb=True, destination="+18005550199",
                                                         min_duration_s=60, seq=q))
            assert type(ack).__name__ == "Ack", ack
        out: dict = {}
        t = threading.Thread(target=lambda: out.update(s.http.post(
            "/v1/calls", json={"caller": "+12125550177", "vertical": "auc_live"}, headers={"Authorization": f"Bearer {p_key}"}).json()))
        t.start()
        req = decliner.wait_for(lambda m: type(m).__name__ == "BidRequest")
        decliner.send(NoBid(request_id=req.request_id))
        t.join(10)
        assert out["reason"] == "no_eligible_bid", out
        v = s.http.get(f"/v1/calls/{out['call_id']}/auction", headers=s.admin).json()
        assert {c["campaign"]: c["outcome"] for c in v["candidates"]} == {"live-d": "no_bid", "live-s": "timeout"}, v
        r = s.http.get(f"/v1/calls/{out['call_id']}/auction", headers={"Authorization": f"Bearer {q_key}"})
        assert [c["outcome"] for c in r.json()["candidates"]] == ["timeout"]
        r = s.http.get(f"/v1/calls/{out['call_id']}/auction", headers={"Authorization": f"Bearer {o_key}"})
        assert r.status_code == 404  # not asked: not its call to read
        decliner.close()
        silent.close()
    finally:
        stop_server(s)
