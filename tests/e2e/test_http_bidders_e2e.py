"""HTTP bidders against a real local HTTP receiver, through a real exchange and real publisher
calls: a fast bidder in cents and one in dollars compete with late, failing, malformed,
unmapped, oversized and mistyped ones; every bad answer is a ``no_bid`` with its reason
(counted per campaign, GET /v1/pings), never an error; connections are pooled; templates see
the caller's number only when they ask for it; bad pings are refused when the campaign is
sent, with a JSON path."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from collections.abc import Iterator

import pytest

from exchange.messages import Campaign
from exchange.pingspec import PingMap, PingSpec
from tests.e2e.conftest import Server, free_port, start_server, stop_server
from tests.e2e.wsclient import Buyer

pytestmark = pytest.mark.e2e
VERT = "e2e_pings"

ANSWERS: dict[str, tuple[int, bytes, float]] = {  # path -> (status, body, delay s)
    "/cents": (200, b'{"bid_cents": 3100, "dest": "+18005550111", "dur": 120}', 0),
    "/dollars": (200, b'{"result": {"bid": "31.25", "phone": "(800) 555-0122"}, "accepted": true}', 0),
    "/slow": (200, b'{"bid_cents": 9000}', 1.5),
    "/500": (500, b'{"bid_cents": 9000}', 0),
    "/malformed": (200, b'{"bid_cents": 90', 0),
    "/unmapped": (200, b'{"price": 9000}', 0),
    "/declined": (200, b'{"accepted": false, "bid_cents": 9000}', 0),
    "/wrong": (200, b'{"bid_cents": "a lot"}', 0),
    "/huge": (200, b'{"pad": "' + b"x" * 200_000 + b'", "bid_cents": 9000}', 0),
    "/redirect": (302, b"", 0),
    "/target": (200, b'{"bid_cents": 9000}', 0),
    "/caller": (200, b'{"bid_cents": 100}', 0),
}


class Receiver:
    """A real HTTP/1.1 keep-alive server answering each path as ANSWERS says."""

    def __init__(self) -> None:
        self.got: dict[str, list[tuple[dict[str, str], bytes, tuple[str, int]]]] = defaultdict(list)
        self.lock = threading.Lock()
        rx = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body leave at once (no 40 ms delayed-ACK stall)

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                path = self.path.split("?", 1)[0]
                with rx.lock:
                    rx.got[path].append((dict(self.headers), body, self.client_address))
                    if "?" in self.path:
                        rx.got[self.path].append((dict(self.headers), body, self.client_address))
                status, out, delay = ANSWERS.get(path, (404, b"", 0))
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", f"http://127.0.0.1:{rx.port}/target")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_POST = do_GET = _answer  # noqa: N815

        self.port = free_port()
        class Quiet(ThreadingHTTPServer):
            request_queue_size = 128  # ten bidders connect at once (the default backlog, 5, drops SYNs: 1 s stalls)

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # the exchange hangs up on /huge and /slow on purpose

        self.http = Quiet(("127.0.0.1", self.port), Handler)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[tuple[dict[str, str], bytes, tuple[str, int]]]:
        with self.lock:
            return list(self.got.get(path, []))


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Server, Receiver]]:
    rx = Receiver()
    server = start_server({"EXCHANGE_PING_ALLOW_LOOPBACK": "true", "EXCHANGE_PING_GRACE_MS": "2000", "EXCHANGE_RTB_TMAX_MS": "300"})
    yield server, rx
    stop_server(server)
    rx.http.shutdown()


def _campaign(cid: str, ping: PingSpec | None, seq: int, vertical: str = VERT, **kw: Any) -> Campaign:
    return Campaign(id=cid, vertical=vertical, bid_cents=kw.pop("bid_cents", 0), destination="+18005550199", min_duration_s=60,
                    rtb=kw.pop("rtb", True), ping=ping, seq=seq, **kw)


def _bidder(server: Server, rx: Receiver, name: str, path: str, m: PingMap, vertical: str = VERT, **kw: Any) -> tuple[str, str, Buyer]:
    bid, key = server.account("buyer", f"ping-{name}", deposit=1_000_000)
    b = Buyer(server.ws_url, key)
    ack = b.request(lambda s: _campaign(f"{name}-c", PingSpec(url=rx.url(path), map=m, **kw), s, vertical))
    assert type(ack).__name__ == "Ack", ack
    b.close()  # an HTTP bidder needs no open socket once its campaign is in the book
    return bid, key, b


def _pings(server: Server, key: str) -> dict[str, dict]:
    r = server.http.get("/v1/pings", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return {c["campaign"]: c for c in r.json()["campaigns"]}


def test_http_bidders_priced_in_one_round_with_bad_answers_as_no_bid(world):
    server, rx = world
    cents = PingMap(bid_cents="$.bid_cents", destination="$.dest", min_duration_s="$.dur")
    keys = {}
    for name, path in (("slow", "/slow"), ("e500", "/500"), ("malformed", "/malformed"), ("unmapped", "/unmapped"),
                       ("declined", "/declined"), ("wrong", "/wrong"), ("huge", "/huge"), ("redirect", "/redirect")):
        keys[name] = _bidder(server, rx, name, path, PingMap(bid_cents="$.bid_cents", accepted="$.accepted"))
    keys["cents"] = _bidder(server, rx, "cents", "/cents", cents)
    keys["dollars"] = _bidder(server, rx, "dollars", "/dollars", PingMap(bid_cents="$.result.bid", destination="$.result.phone",
                                                                          accepted="$.accepted"), bid_unit="dollars")
    _, pub_key = server.account("publisher", "ping-pub")
    pub = {"Authorization": f"Bearer {pub_key}"}
    t0 = time.monotonic()
    d = server.http.post("/v1/calls", json={"caller": "+12125550147", "vertical": VERT, "state": "NY", "tmax_ms": 200,
                                            "tags": {"source": "tv \"spot\""}}, headers=pub).json()
    took = time.monotonic() - t0
    assert d["decision"] == "routed", d
    route = d["route"]
    assert route["buyer"] == keys["dollars"][0] and route["campaign"] == "dollars-c"  # $31.25 beats 3,100 cents
    assert route["destination"] == "+18005550122"  # "(800) 555-0122" as E.164
    assert [f["buyer"] for f in d["fallbacks"]] == [keys["cents"][0]]
    assert d["fallbacks"][0]["destination"] == "+18005550111" and d["fallbacks"][0]["min_duration_s"] == 120
    assert took < 1.2, took  # the slow bidder (1.5 s) did not hold the decision: it ended at tmax_ms (200 ms)
    assert 150_000 <= d["rtb_wait_us"] < 1_000_000, d  # the round waited for tmax_ms, not for the slow bidder

    want = {"slow": "late", "e500": "http_status", "malformed": "malformed", "unmapped": "unmapped", "declined": "declined",
            "wrong": "wrong_type", "huge": "too_large", "redirect": "http_status"}
    for name, reason in want.items():
        got = _pings(server, keys[name][1])[f"{name}-c"]
        assert got["pings"] == 1 and got["bids"] == 0 and got["no_bids"] == {reason: 1}, (name, got)
    assert _pings(server, keys["dollars"][1])["dollars-c"]["bids"] == 1
    assert rx.at("/target") == []  # the redirect was not followed
    # a buyer sees only its own campaigns; the operator every one
    assert set(_pings(server, keys["cents"][1])) == {"cents-c"}
    assert {"cents-c", "dollars-c", "slow-c"} <= set(_pings(server, server.admin["Authorization"].split()[1]))
    # the native body is the bid_request: the call's fields, never the caller's number
    (headers, body, _), = rx.at("/cents")
    sent = json.loads(body)
    assert sent["type"] == "bid_request" and sent["call"]["state"] == "NY" and sent["call"]["tags"]["source"] == 'tv "spot"'
    assert "2125550147" not in body.decode() and headers["Content-Type"] == "application/json"
    metrics = server.http.get("/metrics").text
    assert 'exchange_ping_no_bids_total{reason="late"}' in metrics


def test_pings_reuse_pooled_connections(world):
    server, rx = world
    vertical = VERT + "_pool"
    _bidder(server, rx, "pooled", "/target", PingMap(bid_cents="$.bid_cents"), vertical)
    _, pub_key = server.account("publisher", "pool-pub")
    before = len(rx.at("/target"))
    seen = {addr for hits in list(rx.got.values()) for _, _, addr in hits}  # connections the exchange opened so far
    for k in range(8):
        d = server.http.post("/v1/calls", json={"caller": f"+1212555{k:04d}", "vertical": vertical, "state": "NY", "tmax_ms": 500},
                             headers={"Authorization": f"Bearer {pub_key}"}).json()
        assert d["decision"] == "routed", d
    new = {addr for _, _, addr in rx.at("/target")[before:]} - seen
    assert len(rx.at("/target")) - before == 8 and len(new) <= 1, new  # eight pings, at most one new connection


def test_templates_fill_placeholders_and_reveal_the_caller_only_when_asked(world):
    server, rx = world
    vertical = VERT + "_tpl"
    template = {"lead": {"state": "{state}", "area": "{area_code}", "phone": "{caller}", "src": "{tags.source}",
                         "note": "call {call_id} in {vertical}"}, "fixed": [1, True]}
    _bidder(server, rx, "tpl", "/caller", PingMap(bid_cents="$.bid_cents"), vertical, body_template=template,
            headers={"X-Api-Key": "k1"})
    _bidder(server, rx, "get", "/caller?st={state}&v={vertical}", PingMap(bid_cents="$.bid_cents"), vertical, method="GET")
    _, pub_key = server.account("publisher", "tpl-pub")
    d = server.http.post("/v1/calls", json={"caller": "+13125550148", "vertical": vertical, "state": "IL", "tmax_ms": 500,
                                            "tags": {"source": "web"}}, headers={"Authorization": f"Bearer {pub_key}"}).json()
    assert d["decision"] == "routed", d
    posts = [(h, b) for h, b, _ in rx.at("/caller") if b]
    assert len(posts) == 1
    headers, body = posts[0]
    sent = json.loads(body)
    assert sent == {"lead": {"state": "IL", "area": 312, "phone": "+13125550148", "src": "web",
                             "note": f"call {d['call_id']} in {vertical}"}, "fixed": [1, True]}
    assert headers["X-Api-Key"] == "k1"
    assert rx.at(f"/caller?st=IL&v={vertical}")  # a GET ping with its query filled


def _refused(server: Server, key: str, ping: dict, rtb: bool = True) -> tuple[str, str]:
    b = Buyer(server.ws_url, key)
    try:
        seq = b.next_seq()
        msg = {"type": "campaign", "id": "bad-c", "vertical": VERT + "_bad", "bid_cents": 0, "destination": "+18005550199",
               "min_duration_s": 60, "rtb": rtb, "ping": ping, "seq": seq}
        b.send_raw(json.dumps(msg))
        err = b.wait_for(lambda m: getattr(m, "seq", None) == seq)
        assert type(err).__name__ == "Error", err
        return err.code, err.path
    finally:
        b.close()


def test_bad_pings_are_refused_when_the_campaign_is_sent_with_a_json_path(world):
    server, rx = world
    _, key = server.account("buyer", "ping-bad", deposit=1000)
    m = {"bid_cents": "$.bid"}
    assert _refused(server, key, {"url": "ftp://x.example/", "map": m}) == ("invalid_url", "$.ping.url")
    assert _refused(server, key, {"url": "http://169.254.169.254/latest/meta-data", "map": m}) == ("invalid_url", "$.ping.url")
    assert _refused(server, key, {"url": "http://[fd00:ec2::254]/", "map": m}) == ("invalid_url", "$.ping.url")
    assert _refused(server, key, {"url": f"http://127.0.0.1:{server.port}/v1/calls", "map": m}) == ("invalid_url", "$.ping.url")
    assert _refused(server, key, {"url": f"http://localhost:{server.port}/v1/calls", "map": m}) == ("invalid_url", "$.ping.url")
    assert _refused(server, key, {"url": rx.url("/x"), "map": {"bid_cents": "bid"}}) == ("invalid_field", "$.ping.map.bid_cents")
    assert _refused(server, key, {"url": rx.url("/x"), "map": {"bid_cents": "$.a", "destination": "$.b[x]"}}) == (
        "invalid_field", "$.ping.map.destination")
    assert _refused(server, key, {"url": rx.url("/x"), "map": {"bid_cent": "$.a"}})[1] == "$.ping.map.bid_cent"  # (the unknown key itself)
    assert _refused(server, key, {"url": rx.url("/x"), "map": m, "body_template": {"a": {"b": "{ssn}"}}}) == (
        "invalid_field", "$.ping.body_template.a.b")
    assert _refused(server, key, {"url": rx.url("/x"), "map": m, "method": "GET", "body_template": "x"}) == (
        "invalid_field", "$.ping.body_template")
    assert _refused(server, key, {"url": rx.url("/x"), "map": m, "headers": {"Host": "evil"}}) == ("invalid_field", "$.ping.headers.Host")
    assert _refused(server, key, {"url": rx.url("/x"), "map": m}, rtb=False) == ("invalid_field", "$.ping")
    assert _refused(server, key, {"url": rx.url("/x"), "map": m, "bid_unit": "euros"})[1] == "$.ping.bid_unit"


def test_loopback_pings_are_refused_unless_the_operator_allows_them():
    server = start_server()  # EXCHANGE_PING_ALLOW_LOOPBACK unset: off
    try:
        _, key = server.account("buyer", "ping-noloop", deposit=1000)
        assert _refused(server, key, {"url": "http://127.0.0.1:9/x", "map": {"bid_cents": "$.bid"}}) == ("invalid_url", "$.ping.url")
        assert _refused(server, key, {"url": "http://localhost:9/x", "map": {"bid_cents": "$.bid"}}) == ("invalid_url", "$.ping.url")
        assert _refused(server, key, {"url": "http://10.1.2.3/x", "map": {"bid_cents": "$.bid"}}) == ("invalid_url", "$.ping.url")
    finally:
        stop_server(server)


def test_pings_in_flight_are_bounded_per_endpoint():
    """``EXCHANGE_PING_INFLIGHT=1``: while a slow endpoint holds its one ping, the next calls'
    pings to it are ``busy`` at once (not queued), and the calls are decided within tmax_ms."""
    rx = Receiver()
    server = start_server({"EXCHANGE_PING_ALLOW_LOOPBACK": "true", "EXCHANGE_PING_INFLIGHT": "1", "EXCHANGE_PING_GRACE_MS": "3000"})
    try:
        vertical = VERT + "_busy"
        _, key, _ = _bidder(server, rx, "busy", "/slow", PingMap(bid_cents="$.bid_cents"), vertical)
        _, pub_key = server.account("publisher", "busy-pub")
        got: list[dict] = []

        def call(k: int) -> None:
            got.append(server.http.post("/v1/calls", json={"caller": f"+1312555{k:04d}", "vertical": vertical, "state": "IL",
                                                           "tmax_ms": 100}, headers={"Authorization": f"Bearer {pub_key}"}).json())

        call(0)  # its ping is still in flight (1.5 s) after the decision (100 ms)
        threads = [threading.Thread(target=call, args=(k,)) for k in (1, 2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert [d["reason"] for d in got] == ["no_eligible_bid"] * 3, got
        counts = _pings(server, key)["busy-c"]
        assert counts["pings"] == 3 and counts["no_bids"] == {"late": 1, "busy": 2}, counts
        assert len(rx.at("/slow")) == 1  # the busy pings were never sent
    finally:
        stop_server(server)
        rx.http.shutdown()


def test_every_new_connection_checks_the_address_it_connects_to():
    """The per-connection check, on the path a DNS answer that changed after the campaign was
    accepted would take: a plan whose host resolves to loopback, pinged by an exchange that does
    not allow loopback, is ``refused_address`` and nothing reaches the receiver."""
    import asyncio

    from exchange.httpbid import CheckedResolver, HttpBidders
    from exchange.metrics import Metrics
    from exchange.pingspec import CallView, compile_ping
    from exchange.settings import Settings
    from exchange.ssrf import UrlRefused

    rx = Receiver()

    async def main() -> None:
        with pytest.raises(UrlRefused):
            await CheckedResolver(False, ("127.0.0.1", 8080)).resolve("localhost", rx.port)
        ok = await CheckedResolver(True, ("127.0.0.1", 8080)).resolve("localhost", rx.port)
        assert ok and all(r["host"] in ("127.0.0.1", "::1") for r in ok)
        view = CallView("c", "c.0", "k", "v", "NY", 212, "inbound", 0, 500, None, {})
        plan = compile_ping(PingSpec(url=f"http://localhost:{rx.port}/target", map=PingMap(bid_cents="$.bid_cents")), True)
        for allow, want in ((False, "refused_address"), (True, "bid")):
            pings = HttpBidders(Settings(ping_allow_loopback=allow), Metrics())
            try:
                task = pings.start(("b", "k"), plan, view, {"type": "bid_request"}, 500)
                assert not isinstance(task, str)
                got = await task
                assert (got if isinstance(got, str) else "bid") == want, got
            finally:
                await pings.close()

    try:
        asyncio.run(main())
        assert len(rx.at("/target")) == 1  # only the allowed one
    finally:
        rx.http.shutdown()


def test_a_buyer_with_no_socket_at_all_sends_its_campaign_over_http(world):
    server, rx = world
    vertical = VERT + "_nows"
    bid, key = server.account("buyer", "ping-nows", deposit=1_000_000)
    auth = {"Authorization": f"Bearer {key}"}
    campaign = {"id": "nows-c", "vertical": vertical, "bid_cents": 0, "destination": "+18005550199", "min_duration_s": 60, "rtb": True,
                "ping": {"url": rx.url("/dollars"), "map": {"bid_cents": "$.result.bid", "destination": "$.result.phone"},
                         "bid_unit": "dollars"}}
    r = server.http.post("/v1/campaigns", json=campaign, headers=auth)
    assert r.status_code == 200 and r.json() == {"id": "nows-c", "buyer": bid, "rtb": True, "ping": True}, r.text
    _, pub_key = server.account("publisher", "nows-pub")
    d = server.http.post("/v1/calls", json={"caller": "+14155550199", "vertical": vertical, "state": "CA", "tmax_ms": 300},
                         headers={"Authorization": f"Bearer {pub_key}"}).json()
    assert d["decision"] == "routed" and d["route"]["buyer"] == bid and d["route"]["destination"] == "+18005550122", d
    bad = server.http.post("/v1/campaigns", json={**campaign, "ping": {**campaign["ping"], "map": {"bid_cents": "$.x["}}}, headers=auth)
    assert bad.status_code == 422 and bad.json()["error"]["path"] == "$.ping.map.bid_cents", bad.text
    meta = server.http.post("/v1/campaigns", json={**campaign, "ping": {**campaign["ping"], "url": "http://169.254.169.254/"}}, headers=auth)
    assert meta.status_code == 422 and meta.json()["error"] == {"code": "invalid_url", "message": meta.json()["error"]["message"],
                                                                 "path": "$.ping.url"}, meta.text
    assert _pings(server, key)["nows-c"]["bids"] == 1  # the refused replacements changed nothing
