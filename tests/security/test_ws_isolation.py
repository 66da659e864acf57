"""Tenant isolation on the buyer WebSocket, on a real server: for every buyer message type,
a buyer aiming it at another buyer's campaign or bid request changes nothing of the other's
(proved by routing a call afterwards), and wins and call notices reach only their owner.
"""

from __future__ import annotations

import threading
from typing import Iterator, get_args

import pytest

from exchange.messages import (
    Ack, Bid, BidRequest, BuyerMessage, CallNotice, Campaign, Error, Loss, NoBid, Pause, Ping, Pong, Resume, RtbBid, Win,
    json_encoder,
)
from tests.e2e.conftest import Server, stop_server
from tests.e2e.wsclient import Buyer
from tests.security.kit import Tenant, Tenants, make_tenants, start

pytestmark = pytest.mark.e2e

BOOK_TEST = "test_buyer_messages_cannot_touch_another_buyers_campaigns"
RTB_TEST = "test_rtb_answers_cannot_be_given_for_another_buyer"
COVERAGE = {"campaign": BOOK_TEST, "bid": BOOK_TEST, "pause": BOOK_TEST, "resume": BOOK_TEST, "ping": BOOK_TEST,
            "rtb_bid": RTB_TEST, "no_bid": RTB_TEST}
A_DEST, B_DEST = "+18005550101", "+18005550102"


class Ws:
    def __init__(self, server: Server, t: Tenants, a: Buyer, b: Buyer, c: Buyer) -> None:
        self.server, self.t, self.a, self.b, self.c = server, t, a, b, c

    def route(self, vertical: str, caller: str = "+13125550142", p: Tenant | None = None, **extra: object) -> dict:
        r = self.server.http.post("/v1/calls", json={"caller": caller, "vertical": vertical, **extra}, headers=(p or self.t.p1).auth)
        assert r.status_code == 200, r.text
        return r.json()


def ok(msg: object) -> None:
    assert isinstance(msg, Ack), msg


def refused(msg: object, code: str) -> None:
    assert isinstance(msg, Error) and msg.code == code, msg


def settle(buyer: Buyer) -> list[object]:
    """Everything the exchange sent ``buyer`` up to now (a ping's pong comes after it all)."""
    seq = buyer.next_seq()
    buyer.send(Ping(seq=seq))
    buyer.wait_for(lambda m: isinstance(m, Pong) and m.seq == seq)
    got, buyer.inbox[:] = list(buyer.inbox), []
    return got


def about(msgs: list[object], call_id: str) -> list[object]:
    return [m for m in msgs if getattr(m, "call_id", None) == call_id]


@pytest.fixture(scope="module")
def ws() -> Iterator[Ws]:
    server, _ = start()
    clients: list[Buyer] = []
    try:
        t = make_tenants(server, "ws")
        c_id, c_key = server.account("buyer", "ws-c", 1_000_000)
        clients = [Buyer(server.ws_url, t.a.key), Buyer(server.ws_url, t.b.key), Buyer(server.ws_url, c_key)]
        ok(clients[2].request(lambda s: Campaign(id="c1", vertical="sec_ws_elsewhere", bid_cents=100, destination=B_DEST, min_duration_s=30, seq=s)))
        yield Ws(server, t, *clients)
    finally:
        for c in clients:
            c.close()
        stop_server(server)


def test_every_buyer_message_type_has_an_isolation_test():
    tags = {cls.__struct_config__.tag for cls in get_args(BuyerMessage)}
    assert tags == set(COVERAGE), f"buyer messages without an isolation test: {tags - set(COVERAGE)}"


def test_buyer_messages_cannot_touch_another_buyers_campaigns(ws: Ws):
    a, b, t, v = ws.a, ws.b, ws.t, "sec_ws_book"
    ok(a.request(lambda s: Campaign(id="c1", vertical=v, bid_cents=3000, destination=A_DEST, min_duration_s=30, seq=s)))

    def a_wins(d: dict, fallbacks: list[str]) -> None:
        assert d["decision"] == "routed", d
        assert (d["route"]["buyer"], d["route"]["campaign"], d["route"]["destination"], d["route"]["payout_cents"]) == \
            (t.a.id, "c1", A_DEST, 2400), d  # a's price and destination, untouched
        assert [f["buyer"] for f in d["fallbacks"]] == fallbacks, d

    a_wins(ws.route(v), [])
    # bid and pause aimed at a's campaign id: refused as unknown (b has no such campaign)
    refused(b.request(lambda s: Bid(campaign="c1", bid_cents=1, seq=s)), "unknown_campaign")
    refused(b.request(lambda s: Pause(campaign="c1", seq=s)), "unknown_campaign")
    a_wins(ws.route(v), [])  # not repriced to 1, not paused
    # resume of a's paused campaign: refused; the campaign stays paused
    ok(a.request(lambda s: Pause(campaign="c1", seq=s)))
    refused(b.request(lambda s: Resume(campaign="c1", seq=s)), "unknown_campaign")
    assert ws.route(v)["reason"] == "no_eligible_bid"
    ok(a.request(lambda s: Resume(campaign="c1", seq=s)))
    a_wins(ws.route(v), [])
    # campaign with a's id: b gets a campaign of its own by that name; a's is not replaced
    ok(b.request(lambda s: Campaign(id="c1", vertical=v, bid_cents=1000, destination=B_DEST, min_duration_s=30, seq=s)))
    a_wins(ws.route(v), [t.b.id])
    # from now on b's bid / pause / resume of "c1" act on b's own campaign only
    ok(b.request(lambda s: Bid(campaign="c1", bid_cents=2000, seq=s)))
    ok(b.request(lambda s: Pause(campaign="c1", seq=s)))
    a_wins(ws.route(v), [])
    ok(b.request(lambda s: Resume(campaign="c1", seq=s)))
    d = ws.route(v)
    a_wins(d, [t.b.id])
    assert (d["fallbacks"][0]["destination"], d["fallbacks"][0]["payout_cents"]) == (B_DEST, 1600)
    # a batch frame mixing b's own and a's campaign: only b's own is touched
    b.send([Bid(campaign="c1", bid_cents=2100, seq=b.next_seq()), Pause(campaign="nope-of-a", seq=b.next_seq())])
    replies = [b.wait_for(lambda m: isinstance(m, (Ack, Error)) and m.seq == s) for s in (b._seq - 1, b._seq)]
    assert isinstance(replies[0], Ack) and isinstance(replies[1], Error)
    assert isinstance(b.request(lambda s: Ping(seq=s)), Pong)
    a_wins(ws.route(v), [t.b.id])


def test_rtb_answers_cannot_be_given_for_another_buyer(ws: Ws):
    a, b, t, v = ws.a, ws.b, ws.t, "sec_ws_rtb"
    ok(a.request(lambda s: Campaign(id="live", vertical=v, bid_cents=0, destination=A_DEST, min_duration_s=30, rtb=True, seq=s)))
    out: list[dict] = []
    caller = threading.Thread(target=lambda: out.append(ws.route(v, tmax_ms=3000)))
    caller.start()
    try:
        req = a.wait_for(lambda m: isinstance(m, BidRequest), timeout=5)
        # b learns a's request id (the worst case) and answers it: both refused as unknown
        refused(b.request(lambda s: RtbBid(request_id=req.request_id, bid_cents=9000, destination=B_DEST, seq=s)), "unknown_request")
        refused(b.request(lambda s: NoBid(request_id=req.request_id, seq=s)), "unknown_request")
        a.send(RtbBid(request_id=req.request_id, bid_cents=3300))
    finally:
        caller.join(10)
    d = out[0]
    assert d["decision"] == "routed" and d["rtb_wait_us"] < 3_000_000, d  # a's round was still open for a's answer
    assert (d["route"]["buyer"], d["route"]["destination"], d["route"]["payout_cents"]) == (t.a.id, A_DEST, 2640), d
    win = a.wait_for(lambda m: isinstance(m, Win) and m.call_id == d["call_id"])
    assert win.price_cents == 3300 and win.destination == A_DEST
    # after the round b still gets "unknown", never "late_answer" (which would confirm a's id)
    refused(b.request(lambda s: RtbBid(request_id=req.request_id, bid_cents=1, seq=s)), "unknown_request")
    assert not about(settle(b), d["call_id"])


def test_wins_and_call_notices_go_only_to_the_owner(ws: Ws):
    a, b, c, t, v = ws.a, ws.b, ws.c, ws.t, "sec_ws_notice"
    for buyer, bid, dest in ((a, 4000, A_DEST), (b, 2000, B_DEST)):
        ok(buyer.request(lambda s: Campaign(id="n1", vertical=v, bid_cents=bid, destination=dest, min_duration_s=30, seq=s)))
    for buyer in (a, b, c):
        settle(buyer)
    caller = "+13125550199"
    d = ws.route(v, caller=caller)
    cid = d["call_id"]
    assert d["route"]["buyer"] == t.a.id
    win = a.wait_for(lambda m: isinstance(m, Win) and m.call_id == cid)
    assert win.caller == caller and win.price_cents == 4000
    b_got, c_got = about(settle(b), cid), about(settle(c), cid)
    assert [type(m) for m in b_got] == [Loss], b_got  # the loser hears it lost, nothing more
    assert not c_got, c_got
    for m in b_got:
        text = json_encoder.encode(m).decode()
        assert caller not in text and caller[2:] not in text and A_DEST not in text, text
    auth = t.p1.auth
    for key, ev in (("n-1", {"event": "connected"}), ("n-2", {"event": "completed", "duration_s": 75})):
        assert ws.server.http.post(f"/v1/calls/{cid}/events", json=ev, headers={**auth, "Idempotency-Key": key}).status_code == 200
    done = a.wait_for(lambda m: isinstance(m, CallNotice) and m.call_id == cid and m.status == "completed")
    assert done.billable and done.charged_cents == 4000
    assert not about(settle(b), cid) and not about(settle(c), cid)
    # the other's view of money: nothing (404), and its own statement does not name the call
    assert ws.server.http.get(f"/v1/accounts/{t.a.id}/statement", headers=t.b.auth).status_code == 404
    assert cid not in ws.server.http.get(f"/v1/accounts/{t.b.id}/statement", headers=t.b.auth).text
