"""The delivery worker is a process of its own (``python -m exchange deliver``, the child of
``serve``): stopped, the exchange goes on deciding and nothing is delivered; resumed, it
catches up; killed with SIGKILL, the exchange starts it again and it goes on from the store's
positions: every event of the tenant arrives, in order of first arrival, none lost and none
invented, a repeat only with the same id and body. On both stores."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Server, free_port, market, route_calls, start_server, stop_server
from tests.integration.conftest import pg_schema_url

pytestmark = pytest.mark.e2e
VERT = "e2e_hookworker"


class Receiver:
    """A real HTTP server answering 200 to every POST, keeping (event id, body) in arrival order."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.got.append((self.headers.get("DCE-Event-Id", ""), body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

        self.port = free_port()
        self.http = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def ids(self) -> list[str]:
        with self.lock:
            return [i for i, _ in self.got]


def worker_pids(server: Server) -> list[int]:
    """The server's children running ``exchange deliver``."""
    pid = server.proc.pid
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    out = []
    for kid in kids:
        try:
            cmd = Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"deliver" in cmd and b"exchange" in cmd:
            out.append(int(kid))
    return out


def _wait(what, timeout_s: float = 30.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture(params=["sqlite", "postgres"])
def world(request: pytest.FixtureRequest) -> Iterator[tuple[Server, Receiver]]:
    urls = pg_schema_url("e2e_hookworker") if request.param == "postgres" else iter([None])
    url = next(urls)
    receiver = Receiver()
    env = {"EXCHANGE_WEBHOOK_ALLOW_LOOPBACK": "true", **({"EXCHANGE_DATABASE_URL": url} if url else {})}
    server = start_server(env)
    try:
        yield server, receiver
    finally:
        stop_server(server)
        receiver.http.shutdown()
        for _ in urls:  # the PostgreSQL schema dropped
            pass


def test_worker_process_delivers_beside_the_exchange_and_survives_kill_9(world):
    server, rx = world
    m = market(server, "hw", VERT, 2500, 10_000_000)
    buyer = {"Authorization": f"Bearer {m.buyer_key}"}
    worker = _wait(lambda: worker_pids(server), 20)
    assert len(worker) == 1 and worker[0] != server.proc.pid
    start = server.http.get("/v1/events", params={"after": "0", "limit": 1000}, headers=buyer).json()["position"]
    r = server.http.post("/v1/webhooks", json={"url": f"http://127.0.0.1:{rx.port}/all"}, headers=buyer)
    assert r.status_code == 201, r.text
    time.sleep(1.5)  # the worker has seen the endpoint (it looks for new ones every second)
    calls = route_calls(server, m, 5, VERT, "CA", "+1415555")
    _wait(lambda: len(rx.ids()) >= 5, 20)

    # stopped: the exchange goes on deciding, nothing is delivered; resumed: it catches up
    os.kill(worker[0], signal.SIGSTOP)
    try:
        time.sleep(0.3)
        before = len(rx.ids())
        calls += route_calls(server, m, 5, VERT, "CA", "+1415556")
        time.sleep(1.0)
        assert len(rx.ids()) == before
    finally:
        os.kill(worker[0], signal.SIGCONT)
    _wait(lambda: len(rx.ids()) >= before + 5, 20)

    # killed mid-stream: started again by the exchange, which kept deciding meanwhile
    more = []
    for k, prefix in enumerate(("+1415557", "+1415558", "+1415559", "+1415554")):
        if k == 1:
            os.kill(worker[0], signal.SIGKILL)
        more += route_calls(server, m, 10, VERT, "CA", prefix)
    calls += more
    restarted = _wait(lambda: [p for p in worker_pids(server) if p != worker[0]], 20)
    assert len(restarted) == 1
    _wait(lambda: "exchange_webhook_worker_starts 2" in server.http.get("/metrics").text, 10)

    events = []
    after = start
    while True:
        page = server.http.get("/v1/events", params={"after": after, "limit": 1000}, headers=buyer).json()
        events += page["events"]
        if not page["next_cursor"]:
            break
        after = page["next_cursor"]
    ids = [e["id"] for e in events]
    assert {e["call_id"] for e in events if e["type"] == "call.decided"} >= set(calls)
    _wait(lambda: set(rx.ids()) >= set(ids), 30)
    with rx.lock:
        got = list(rx.got)
    first: dict[str, bytes] = {}
    for i, body in got:
        assert first.setdefault(i, body) == body  # a repeat (at least once) carries the same body
    assert set(first) == set(ids)  # none lost, none invented
    assert list(first) == ids  # in order of first arrival
    assert [json.loads(first[i]) for i in ids] == events
