"""The call link (``exchange.nodelink``) between real nodes on real PostgreSQL and Redis: an
edge's calls and events reach the seller over one TCP connection and come back as the seller
answers them over HTTP (statuses, bodies, idempotent retries, refusals); only a seller opens the
link, and only to the market's secret; a hostile frame closes the link and harms nothing."""

from __future__ import annotations

import asyncio
import json
import threading

import msgspec
import redis

from exchange.messages import Ack, BidRequest, Campaign, RtbBid, Win
from exchange.nodelink import Frames, frame
from loadtest.target import parse_prometheus
from tests.cluster.conftest import REDIS_URL, Market, start_node, submit, until
from tests.e2e.conftest import stop_server
from tests.e2e.wsclient import Buyer


def linked(server, what: str = "requests") -> int:
    return int(parse_prometheus(server.http.get("/metrics").text)[f"exchange_node_link_{what}_total"])


def test_an_edge_sends_calls_and_events_over_its_link_and_answers_as_the_seller_does(market: Market) -> None:
    seller = start_node(market, "s")
    edge = start_node(market, "e")
    try:
        _, buyer_key = seller.account("buyer", "linked-buyer", deposit=100_000)
        _, pub_key = seller.account("publisher", "linked-pub")
        auth = {"Authorization": f"Bearer {pub_key}"}
        b = Buyer(edge.ws_url, buyer_key)  # its notices cross from the seller on the link too
        assert isinstance(b.request(lambda s: Campaign(id="c1", vertical="solar", bid_cents=2500, destination="+18005550199",
                                                       min_duration_s=30, seq=s)), Ack)
        assert isinstance(b.request(lambda s: Campaign(id="live", vertical="hvac", bid_cents=100, destination="+18005550199",
                                                       min_duration_s=30, rtb=True, seq=s)), Ack)
        assert linked(edge) == 0
        d = until(lambda: (x := submit(edge, auth, "+14155550121"))["decision"] == "routed" and x, what="a call routed via the edge")
        assert d["route"]["campaign"] == "c1"
        assert b.wait_for(lambda m: isinstance(m, Win) and m.call_id == d["call_id"]).price_cents == 2500
        n = linked(edge)
        assert n >= 1  # every call above went over the link
        assert linked(seller, "notices") >= 1  # the win, to the buyer on the edge

        rtb_call: dict = {}
        t = threading.Thread(target=lambda: rtb_call.update(submit(edge, auth, "+14155550125", "hvac")))
        t.start()
        q = b.wait_for(lambda m: isinstance(m, BidRequest))  # the seller's bid request, on the link to the edge
        b.send(RtbBid(request_id=q.request_id, bid_cents=1700))  # the answer, on the link to the seller
        t.join(10)
        assert rtb_call["decision"] == "routed" and rtb_call["route"]["campaign"] == "live", rtb_call
        assert linked(edge, "notices") >= 1
        n += 1

        ev = f"/v1/calls/{d['call_id']}/events"
        r = edge.http.post(ev, json={"event": "connected"}, headers={**auth, "Idempotency-Key": "k-conn"})
        assert r.status_code == 200, r.text
        done = edge.http.post(ev, json={"event": "completed", "duration_s": 90}, headers={**auth, "Idempotency-Key": "k-done"})
        assert done.status_code == 200 and done.json()["charged_cents"] == 2500, done.text
        again = edge.http.post(ev, json={"event": "completed", "duration_s": 90}, headers={**auth, "Idempotency-Key": "k-done"})
        assert again.status_code == 200 and again.json() == done.json()  # the same answer, charged once
        at_seller = seller.http.post(ev, json={"event": "completed", "duration_s": 90}, headers={**auth, "Idempotency-Key": "k-done"})
        assert at_seller.json() == done.json()

        bad = edge.http.post("/v1/calls", content=b'{"caller": "+14155550122", "vertical": 7}', headers=auth)
        assert bad.status_code == 422 and bad.json()["error"]["path"] == "$.vertical", bad.text
        no_key = edge.http.post(ev, json={"event": "connected"}, headers=auth)
        assert no_key.status_code == 400 and no_key.json()["error"]["code"] == "missing_idempotency_key", no_key.text
        wrong_role = edge.http.post("/v1/calls", json={"caller": "+14155550123", "vertical": "solar"},
                                    headers={"Authorization": f"Bearer {buyer_key}"})
        assert wrong_role.status_code == 403, wrong_role.text
        unknown = edge.http.post("/v1/calls", json={"caller": "+14155550124", "vertical": "solar"},
                                 headers={"Authorization": "Bearer dce_not_a_key"})
        assert unknown.status_code == 401  # refused at the edge: never sent
        assert linked(edge) == n + 6  # connected, completed twice, the 422, the 400 and the 403
        assert linked(seller) == 0

        listed = seller.http.get("/v1/calls", headers=auth).json()["calls"]
        assert d["call_id"] in [c["call_id"] for c in listed]
        b.close()
    finally:
        stop_server(edge)
        stop_server(seller)


def test_only_a_seller_opens_the_link_and_only_to_the_markets_secret(market: Market) -> None:
    seller = start_node(market, "s")
    edge = start_node(market, "e")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        secret = client.get(f"{market.name}:link")
        assert secret
        leases = {n: json.loads(client.get(f"{market.name}:node:{n}").decode().partition("|")[2]) for n in ("s", "e")}
        _, pub_key = seller.account("publisher", "raw-pub")

        async def hello(port: int, given: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(frame(msgspec.msgpack.encode([given.decode(), "x"])))
            try:
                got = await asyncio.wait_for(reader.read(100), 5)
            except ConnectionError:
                got = b""
            return reader, writer, got

        async def scenario() -> None:
            for port, given in ((leases["s"]["link"], b"not-the-secret"), (leases["s"]["link"], b""), (leases["e"]["link"], secret)):
                _, writer, got = await hello(port, given)
                assert got == b"", (port, given, got)  # closed: no "ok"
                writer.close()
            silent_reader, silent = await asyncio.open_connection("127.0.0.1", leases["s"]["link"])  # says nothing
            reader, writer, got = await hello(leases["s"]["link"], secret)
            assert got == frame(b"ok")
            call = json.dumps({"caller": "+14155550131", "vertical": "solar"}).encode()
            headers = [[b"authorization", f"Bearer {pub_key}".encode()], [b"content-type", b"application/json"]]
            writer.write(frame(msgspec.msgpack.encode([[[7, "POST", "/v1/calls", b"", headers, call, "10.9.8.7"],
                                                        [8, "POST", "/v1/calls", b"", headers, b"{", "10.9.8.7"]], []])))
            got_answers: dict[int, tuple] = {}
            frames = Frames(1 << 20)
            while len(got_answers) < 2:
                for payload in frames.feed(await asyncio.wait_for(reader.read(65536), 5)) or []:
                    answers, notices = msgspec.msgpack.decode(payload)
                    assert notices == []
                    for rid, status, _, body in answers:
                        got_answers[rid] = (status, json.loads(body))
            assert got_answers[7][0] == 200 and got_answers[7][1]["reason"] == "no_eligible_bid"
            assert got_answers[8][0] == 422 and got_answers[8][1]["error"]["code"] == "malformed_json"
            writer.write(frame(b"\xc1 not msgpack"))  # a hostile frame: the link closes, the seller serves on
            assert await asyncio.wait_for(reader.read(100), 5) == b""
            writer.close()
            assert await asyncio.wait_for(silent_reader.read(100), 10) == b""  # closed after HELLO_TIMEOUT_S
            silent.close()

        asyncio.run(scenario())
        assert seller.http.get("/readyz").status_code == 200
        assert submit(edge, {"Authorization": f"Bearer {pub_key}"}, "+14155550132")["reason"] == "no_eligible_bid"
    finally:
        client.close()
        stop_server(edge)
        stop_server(seller)
