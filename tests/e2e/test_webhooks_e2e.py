"""Signed webhooks against a real local HTTP receiver: a fast endpoint gets its tenant's events
in order with valid signatures; a failing one gets each event again (the same body) until it
answers 2xx; one that closes the socket is disabled with a notice; a slow one holds up no
other; URLs that would reach the exchange or a metadata address are refused."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from tests.e2e.conftest import Server, free_port, market, route_calls, start_server, stop_server

pytestmark = pytest.mark.e2e
VERT = "e2e_webhooks"


class Receiver:
    """A real HTTP server: /fast answers 200, /flaky 500 to the first two tries of the first
    three events it sees (then 200), /slow after 1.5 s, /close closes the socket unanswered."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, str], bytes, float]] = []
        self.tries: Counter[tuple[str, str]] = Counter()
        self.order: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.got.append((self.path, dict(self.headers), body, time.monotonic()))
                    receiver.tries[(self.path, self.headers.get("DCE-Event-Id", ""))] += 1
                    n = receiver.tries[(self.path, self.headers.get("DCE-Event-Id", ""))]
                    seen = receiver.order.setdefault(self.path, [])
                    if n == 1:
                        seen.append(self.headers.get("DCE-Event-Id", ""))
                    early = self.headers.get("DCE-Event-Id", "") in seen[:3]
                if self.path == "/close":
                    self.close_connection = True
                    self.connection.close()
                    return
                if self.path == "/slow":
                    time.sleep(1.5)
                status = 500 if self.path == "/flaky" and early and n <= 2 else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        class Quiet(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # /close hangs up on purpose

        self.port = free_port()
        self.http = Quiet(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[tuple[dict[str, str], bytes, float]]:
        with self.lock:
            return [(h, b, t) for p, h, b, t in self.got if p == path]


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Server, Receiver]]:
    receiver = Receiver()
    server = start_server({"EXCHANGE_WEBHOOK_ALLOW_LOOPBACK": "true", "EXCHANGE_WEBHOOK_RETRY_S": "0.2,0.3,0.5,1,1",
                           "EXCHANGE_WEBHOOK_DISABLE_AFTER": "8"})
    yield server, receiver
    stop_server(server)
    receiver.http.shutdown()


def _wait(what, timeout_s: float = 30.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("timed out")


def _events(server: Server, headers: dict, after: str) -> list[dict]:
    r = server.http.get("/v1/events", params={"after": after, "limit": 1000}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["events"]


def _verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    t, v1 = (kv.split("=", 1)[1] for kv in headers["DCE-Signature"].split(","))
    want = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, v1) and abs(time.time() - int(t)) < 300


def test_webhooks_deliver_signed_in_order_retry_and_disable(world):
    server, rx = world
    m = market(server, "wh", VERT, 2500, 1_000_000)
    buyer = {"Authorization": f"Bearer {m.buyer_key}"}
    start = _events(server, server.admin, "0")[-1]["id"]
    hooks = {}
    for path in ("/fast", "/flaky", "/slow", "/close"):
        r = server.http.post("/v1/webhooks", json={"url": rx.url(path)}, headers=buyer)
        assert r.status_code == 201, r.text
        hooks[path] = r.json()
    pub_hook = server.http.post("/v1/webhooks", json={"url": rx.url("/pub"), "events": ["call.completed"], "secret": "p" * 24},
                                headers=m.auth)
    assert pub_hook.status_code == 201 and pub_hook.json()["secret"] == "p" * 24
    calls = route_calls(server, m, 5, VERT, "CA", "+1415555")
    for c in calls:
        r = server.http.post(f"/v1/calls/{c}/events", json={"event": "completed", "duration_s": 90},
                             headers={**m.auth, "Idempotency-Key": f"{c}-done"})
        assert r.status_code == 200
    mine = [e for e in _events(server, buyer, start)]
    ids = [e["id"] for e in mine]
    assert len(ids) >= 5 * 5

    # the fast endpoint: every event of the buyer, once, in order, signed
    fast = _wait(lambda: (got := rx.at("/fast")) and len(got) >= len(ids) and got)[:len(ids)]  # (then the notice below)
    assert [h["DCE-Event-Id"] for h, _, _ in fast] == ids
    assert [json.loads(b) for _, b, _ in fast] == mine
    assert all(_verify(hooks["/fast"]["secret"], h, b) for h, b, _ in fast)
    assert not any(_verify(hooks["/flaky"]["secret"], h, b) for h, b, _ in fast[:3])

    # the publisher's endpoint: its own call.completed events only
    pub = _wait(lambda: (got := rx.at("/pub")) and len(got) >= 5 and got)
    assert {json.loads(b)["call_id"] for _, b, _ in pub} == set(calls)
    assert all(json.loads(b)["type"] == "call.completed" and json.loads(b)["account"] == m.publisher_id for _, b, _ in pub)
    assert all(_verify("p" * 24, h, b) for h, b, _ in pub)

    # the flaky endpoint: its first three events three times each (500, 500, 200), the same body each time
    flaky = _wait(lambda: (got := rx.at("/flaky")) and len({h["DCE-Event-Id"] for h, _, _ in got}) >= len(ids)
                  and all(rx.tries[("/flaky", i)] >= 3 for i in ids[:3]) and got, 60)
    bodies: dict[str, set[bytes]] = {}
    for h, b, _ in flaky:
        bodies.setdefault(h["DCE-Event-Id"], set()).add(b)
    assert set(bodies) >= set(ids) and all(len(v) == 1 for v in bodies.values())
    assert [rx.tries[("/flaky", i)] for i in ids[:4]] == [3, 3, 3, 1]

    def first_logged():  # the delivery worker writes its log rows in batches, a tenth of a second apart
        log = server.http.get(f"/v1/webhooks/{hooks['/flaky']['id']}/deliveries", params={"limit": 1000}, headers=buyer).json()
        got = sorted((d for d in log["deliveries"] if d["event_id"] == ids[0]), key=lambda d: d["attempt"])
        return got if len(got) >= 3 else None

    first = _wait(first_logged, 10)
    assert [(d["attempt"], d["ok"], d["http_status"]) for d in first] == [(0, False, 500), (1, False, 500), (2, True, 200)]
    assert first[0]["next_attempt_at"] is not None

    # the endpoint that closes the socket: disabled after 8 failures in a row, with a notice
    def disabled():
        listed = server.http.get("/v1/webhooks", headers=buyer).json()["webhooks"]
        return next((h for h in listed if h["id"] == hooks["/close"]["id"] and not h["enabled"]), None)

    gone = _wait(disabled, 30)
    assert "failed deliveries in a row" in gone["disabled_reason"]
    notice = _wait(lambda: [e for e in _events(server, buyer, start) if e["type"] == "webhook.disabled"])
    assert notice[0]["data"]["webhook_id"] == hooks["/close"]["id"] and notice[0]["account"] == m.buyer_id

    # the slow endpoint held up nobody: the fast one had everything before the slow one's third event
    slow = _wait(lambda: (got := rx.at("/slow")) and len(got) >= 3 and got, 30)
    assert fast[-1][2] < slow[2][2]
    listed = server.http.get("/v1/webhooks", headers=buyer).json()["webhooks"]
    assert "secret" not in json.dumps(listed) and hooks["/fast"]["secret"] not in json.dumps(listed)


def test_webhook_urls_that_could_forge_requests_are_refused(world):
    server, rx = world
    b_id, b_key = server.account("buyer", "wh-ssrf")
    auth = {"Authorization": f"Bearer {b_key}"}
    for url in ("ftp://example.com/hook", "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
                f"http://127.0.0.1:{server.port}/v1/accounts", f"http://localhost:{server.port}/", "file:///etc/passwd",
                "http://user:pw@127.0.0.1:1/"):
        r = server.http.post("/v1/webhooks", json={"url": url}, headers=auth)
        assert r.status_code == 422 and r.json()["error"]["path"] == "$.url", (url, r.text)
    r = server.http.post("/v1/webhooks", json={"url": rx.url("/fast"), "events": ["call.nope"]}, headers=auth)
    assert r.status_code == 422 and r.json()["error"]["path"] == "$.events[0]"
    r = server.http.post("/v1/webhooks", json={"url": rx.url("/fast"), "secret": "short"}, headers=auth)
    assert r.status_code == 422
