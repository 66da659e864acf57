"""An endpoint slower than its events arrive: once more of them wait than its inbox holds
(``EXCHANGE_WEBHOOK_INBOX_MAX``), it stops taking them from the follower and reads its own from the
store, from its position, until it is in step again. Across those switches every event reaches it
exactly once, in order: none lost, none delivered twice (a real delivery worker, a real receiver).
The same with an inbox that never fills: the follower, which reads the records past its tail, must
not hand an endpoint the same records twice (records committed between its two reads did, until
2026-12-07: a batch delivered twice now and then under sustained load)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.conftest import free_port, market, route_calls, start_server, stop_server

pytestmark = pytest.mark.e2e
VERT = "e2e_hook_overflow"


@pytest.mark.parametrize("inbox", [8, 10_000], ids=["inbox_overflows", "in_step"])
def test_a_slow_endpoint_gets_every_event_once_in_order(inbox: int) -> None:
    got: list[str] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length", 0)))
            time.sleep(0.02)  # slower than the events come: the inbox overflows
            with lock:
                got.append(self.headers.get("DCE-Event-Id", ""))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

    port = free_port()
    http = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    server = start_server({"EXCHANGE_WEBHOOK_ALLOW_LOOPBACK": "true", "EXCHANGE_WEBHOOK_INBOX_MAX": str(inbox), "EXCHANGE_WEBHOOK_POLL_MS": "5"})
    try:
        m = market(server, "ov", VERT, 2500, 10_000_000)
        buyer = {"Authorization": f"Bearer {m.buyer_key}"}
        start = server.http.get("/v1/events", params={"after": "0", "limit": 1000}, headers=buyer).json()["events"][-1]["id"]
        r = server.http.post("/v1/webhooks", json={"url": f"http://127.0.0.1:{port}/hook"}, headers=buyer)
        assert r.status_code == 201, r.text

        def calls(n: int, prefix: str) -> None:
            for c in route_calls(server, m, n, VERT, "CA", prefix):
                e = server.http.post(f"/v1/calls/{c}/events", json={"event": "completed", "duration_s": 90},
                                     headers={**m.auth, "Idempotency-Key": f"{c}-done"})
                assert e.status_code == 200, e.text

        calls(1, "+1415557")
        end = time.monotonic() + 20
        seen = -1
        while (seen != len(got) or not got) and time.monotonic() < end:  # the worker has the endpoint, in step
            seen = len(got)
            time.sleep(0.3)
        calls(1, "+1415558")  # handed to its inbox: it delivers them ...
        time.sleep(0.03)
        calls(40, "+1415556")  # ... while these come faster than it takes them: its inbox overflows during that delivery
        ids, after = [], start
        while True:
            page = server.http.get("/v1/events", params={"after": after, "limit": 1000}, headers=buyer).json()["events"]
            if not page:
                break
            ids += [ev["id"] for ev in page]
            after = page[-1]["id"]
        assert len(ids) >= 42 * 4
        end = time.monotonic() + 60
        while time.monotonic() < end:
            with lock:
                if len(set(got) & set(ids)) == len(ids):
                    break
            time.sleep(0.1)
        time.sleep(0.5)  # anything delivered twice would come now
        with lock:
            mine = [i for i in got if i in set(ids)]
        assert len(set(mine)) == len(ids), f"missing {len(ids) - len(set(mine))} of {len(ids)}"
        twice = [i for k, i in enumerate(mine) if mine.index(i) != k]
        assert not twice, f"{len(twice)} delivered twice, the first: {twice[:4]}"
        assert mine == sorted(mine)
    finally:
        stop_server(server)
        http.shutdown()
