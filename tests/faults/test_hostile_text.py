"""Hostile bytes refused at decode, on every endpoint and both subprotocols: control characters
(NUL and the rest of C0; only a consent's ``disclosure_text`` and a refund's ``reason`` take tab,
line feed and carriage return) and integers beyond 64 bits answer ``422`` / an ``error`` with a
JSON path, and no wire message can fail to encode: a huge integer in a call's ``tags`` routed to
a MessagePack RTB buyer used to be a 500 with the RTB round left open."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from websockets.sync.client import connect

from tests.e2e.conftest import start_server, stop_server
from tests.e2e.wsclient import Buyer

VERT = "faults_text"
BIG = 2**64  # one past what MessagePack carries
U64 = 2**64 - 1  # valid: an unsigned 64-bit integer


def metric(server, name: str) -> float:
    for line in server.http.get("/metrics", headers=server.admin).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


@pytest.fixture(scope="module")
def live():
    s = start_server()
    yield s
    stop_server(s)


def _refused(r, path: str) -> None:
    assert r.status_code == 422, (r.status_code, r.text)
    assert r.json()["error"]["path"].startswith(path), r.text


def test_http_bodies_refuse_control_characters_and_huge_integers(live, faults):
    http, admin = live.http, live.admin
    _refused(http.post("/v1/accounts", json={"kind": "publisher", "name": "Acme\u0000Calls"}, headers=admin), "$.name")
    _refused(http.post("/v1/accounts", json={"kind": "buyer", "name": "tab\there"}, headers=admin), "$.name")
    buyer, _ = live.account("buyer", "text-b")
    _, pkey = live.account("publisher", "text-p")
    pub = {"Authorization": f"Bearer {pkey}"}
    _refused(http.post(f"/v1/accounts/{buyer}/deposits", json={"amount_cents": 5, "reference": "r\u0000"}, headers=admin), "$.reference")
    base = {"caller": "+14155550123", "vertical": VERT, "state": "CA"}
    bad_calls = [
        ({**base, "caller": "+1415555\u00000123"}, "$.caller"),
        ({**base, "consent_token": "tok\u001b"}, "$.consent_token"),
        ({**base, "tags": {"k\u0000": "v"}}, "$.tags"),
        ({**base, "tags": {"k": "v\u0000"}}, "$.tags"),
        ({**base, "tags": {"k": "line\nfeed"}}, "$.tags"),
        ({**base, "tags": {"big": BIG}}, "$.tags"),
        ({**base, "tags": {"neg": -(2**63) - 1}}, "$.tags"),
        ({**base, "tags": {"huge": 10**40}}, "$.tags"),
    ]
    for body, path in bad_calls:
        for attempt in range(2):  # the same key again: refused again, never "in progress"
            _refused(http.post("/v1/calls", json=body, headers={**pub, "Idempotency-Key": f"bad-{path}"}), path)
    created = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    consent = {"token": "text-1", "phone": "+14155550124", "sellers": [buyer], "created_at": created}
    for field, value in (("token", "t\u0000"), ("vendor", "v\u0001"), ("page_url", "https://x/\u0000"), ("disclosure_text", "a\u0000b"),
                         ("cert_id", "\u007f\u0000")):
        _refused(http.post("/v1/consents", json={**consent, field: value}, headers=pub), f"$.{field}")
    r = http.post("/v1/consents", json={**consent, "disclosure_text": "I agree.\r\nTo be called:\tyes"}, headers=pub)
    assert r.status_code == 201, r.text  # prose keeps its line breaks and tabs
    _refused(http.post("/v1/consents/text-1/revoke", json={"channel": "sms\u0000"}, headers=pub), "$.channel")
    _refused(http.post("/v1/suppressions", json={"number": "+1415555\u00000125"}, headers=admin), "$.number")
    faults.bad_input("control characters and huge integers over HTTP", 2 + 1 + 2 * len(bad_calls) + 5 + 2)
    ok = http.post("/v1/calls", json={**base, "tags": {"u64": U64, "min": -(2**63), "s": "plain"}}, headers=pub)
    assert ok.status_code == 200, ok.text


def _ws(url: str, path: str, key: str, binary: bool):
    proto = "dce.msgpack.v1" if binary else "dce.json.v1"
    return connect(f"{url}{path}", additional_headers={"Authorization": f"Bearer {key}"}, subprotocols=[proto])


def _roundtrip(ws, msg: dict, binary: bool) -> dict:
    ws.send(msgspec.msgpack.encode(msg) if binary else msgspec.json.encode(msg).decode())
    got = ws.recv(timeout=5)
    out = msgspec.msgpack.decode(got) if binary else msgspec.json.decode(got)
    return out[0] if isinstance(out, list) else out


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
def test_sockets_refuse_control_characters_and_huge_integers(live, faults, binary):
    _, bkey = live.account("buyer", f"text-wsb-{binary}")
    _, pkey = live.account("publisher", f"text-wsp-{binary}")
    camp = {"type": "campaign", "id": "c1", "vertical": VERT, "bid_cents": 100, "min_duration_s": 10, "destination": "+18005550199"}
    with _ws(live.ws_url, "/v1/buyers/ws", bkey, binary) as ws:
        for msg, path in (({**camp, "seq": 1, "schedule": {"tz": "America/New_York\u0000"}}, "$.schedule.tz"),
                          ({**camp, "seq": 2, "destination": "sip:a\u0001b"}, "$.destination"),
                          ({"type": "no_bid", "request_id": "r1", "reason": "x\u0000", "seq": 3}, "$.reason")):
            got = _roundtrip(ws, msg, binary)
            assert got["type"] == "error" and got["path"] == path and got.get("seq") == msg["seq"], got
        assert _roundtrip(ws, {**camp, "seq": 4}, binary) == {"type": "ack", "seq": 4}
    call = {"type": "call", "caller": "+14155550126", "vertical": "faults_text_none"}
    with _ws(live.ws_url, "/v1/publishers/ws", pkey, binary) as ws:
        for n, (extra, path) in enumerate((({"caller": "+1415\u0000"}, "$.caller"), ({"tags": {"a": "\u0000"}}, "$.tags"),
                                           ({"tags": {"a": -(2**63) - 1}}, "$.tags"))):
            if binary and isinstance(extra.get("tags", {}).get("a"), int):
                continue  # MessagePack cannot even carry it
            got = _roundtrip(ws, {**call, **extra, "seq": n + 1}, binary)
            assert got["type"] == "error" and got["path"].startswith(path) and got.get("seq") == n + 1, got
        got = _roundtrip(ws, {**call, "tags": {"u64": U64}, "seq": 9}, binary)
        assert got["type"] == "decision" and got["seq"] == 9, got
    faults.bad_input("control characters and huge integers over WebSocket", 5 + 3)


def test_a_huge_tag_never_reaches_a_msgpack_rtb_buyer_and_leaves_no_round_open(live, faults):
    from exchange.messages import BidRequest, Campaign, RtbBid

    bid, bkey = live.account("buyer", "text-rtb", deposit=100_000)
    _, pkey = live.account("publisher", "text-rtb-p")
    pub = {"Authorization": f"Bearer {pkey}"}
    b = Buyer(live.ws_url, bkey, subprotocol="dce.msgpack.v1")
    ack = b.request(lambda s: Campaign(id="live", vertical="faults_rtb", bid_cents=0, destination="+18005550199", min_duration_s=10,
                                       rtb=True, seq=s))
    assert type(ack).__name__ == "Ack", ack
    body = {"caller": "+14155550127", "vertical": "faults_rtb", "state": "CA", "tmax_ms": 500}
    faults.bad_input("huge integer in tags for a MessagePack RTB buyer")
    r = live.http.post("/v1/calls", json={**body, "tags": {"big": BIG}}, headers={**pub, "Idempotency-Key": "big-1"})
    assert r.status_code == 422 and r.json()["error"]["path"].startswith("$.tags"), r.text
    assert metric(live, "exchange_rtb_rounds_open") == 0
    r = live.http.post("/v1/calls", json={**body, "tags": {"big": BIG}}, headers={**pub, "Idempotency-Key": "big-1"})
    assert r.status_code == 422, r.text  # not 409 in_progress

    answered = threading.Event()

    def answer() -> None:  # the valid unsigned 64-bit tag goes through, to the cent and to the bit
        req = b.wait_for(lambda m: isinstance(m, BidRequest), timeout=5)
        assert req.call.tags == {"u64": U64}
        b.send(RtbBid(request_id=req.request_id, bid_cents=700))
        answered.set()

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    r = live.http.post("/v1/calls", json={**body, "tags": {"u64": U64}}, headers=pub)
    t.join(10)
    assert answered.is_set() and r.status_code == 200 and r.json()["route"]["buyer"] == bid, r.text
    assert metric(live, "exchange_rtb_rounds_open") == 0
    b.close()


def test_control_characters_in_a_url_are_refused_before_any_store_sees_them(database_url, faults):
    """A call id, token or account id with NUL used to reach the store (PostgreSQL: a 500)."""
    server = start_server({"EXCHANGE_DATABASE_URL": database_url})
    try:
        _, key = server.account("publisher", "url-p")
        pub, admin = {"Authorization": f"Bearer {key}"}, server.admin
        cases = [
            ("POST", "/v1/calls/a%00b/events", {"json": {"event": "connected"}, "headers": {**pub, "Idempotency-Key": "k"}}, "$.call_id"),
            ("GET", "/v1/calls/a%1fb", {"headers": pub}, "$.call_id"),
            ("POST", "/v1/calls/a%00b/refund", {"json": {"reference": "r"}, "headers": admin}, "$.call_id"),
            ("GET", "/v1/audit?call_id=a%00b", {"headers": admin}, "$.call_id"),
            ("GET", "/v1/audit?call_id=x&from=2026-01-01T00:00:00Z%0A", {"headers": admin}, "$.from"),
            ("GET", "/v1/accounts/a%00b/statement", {"headers": admin}, "$.account_id"),
            ("POST", "/v1/consents/a%00b/revoke", {"headers": pub}, "$.token"),
        ]
        for method, url, kw, path in cases:
            r = server.http.request(method, url, **kw)
            assert r.status_code == 422 and r.json()["error"]["path"] == path, (url, r.status_code, r.text)
        faults.bad_input("control characters in a URL", len(cases))
        assert server.http.get("/readyz").status_code == 200
    finally:
        stop_server(server)
