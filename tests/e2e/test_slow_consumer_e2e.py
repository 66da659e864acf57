"""A buyer that stops reading is closed when its send queue fills; others are unaffected."""

from __future__ import annotations

import socket
import time

import pytest

from exchange.messages import Ping, json_encoder
from tests.e2e.conftest import start_server, stop_server
from tests.e2e.wsclient import Buyer


@pytest.fixture(scope="module")
def small_queue_server():
    s = start_server({"EXCHANGE_SEND_QUEUE": "16"})
    yield s
    stop_server(s)


def test_slow_consumer_is_closed_and_others_keep_being_served(small_queue_server):
    server = small_queue_server
    _, key = server.account("buyer", "sleepy", 1000)
    sleepy, healthy = Buyer(server.ws_url, key), Buyer(server.ws_url, key)
    sleepy.ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    frame = json_encoder.encode([Ping(seq=i) for i in range(500)]).decode()  # each answered by ~12 KB
    deadline = time.monotonic() + 20
    closed = False
    while time.monotonic() < deadline and not closed:
        try:
            for _ in range(50):
                sleepy.send_raw(frame)
        except Exception:
            closed = True
        metrics = server.http.get("/metrics").text
        closed = closed or "exchange_slow_consumers_closed_total 1" in metrics
    assert closed, "the slow consumer was never closed"
    assert type(healthy.request(lambda s: Ping(seq=s))).__name__ == "Pong"
    healthy.close()
