"""RTB answers do not wait behind the bid frames their buyer sent before them (exchange.server:
urgent frames and read-ahead), on a real server and socket.

A buyer streaming bids has a backlog of frames in its socket whenever the exchange is busy; its
answer to a bid request arrives behind them, and used to be read only once the exchange had
applied every frame before it, so under load answers missed ``tmax_ms``. The frames here are
written in one ``sendall`` so that they reach the server together: the ones before the answer
are queued, not yet applied, when the answer is read.
"""

from __future__ import annotations

import threading

import pytest

from exchange.messages import Error, Ping, Pong, RtbBid, Win, json_encoder
from tests.e2e.test_exchange_e2e import camp
from tests.e2e.wsclient import Buyer

pytestmark = pytest.mark.e2e


def burst(buyer: Buyer, msgs: list[object]) -> None:
    """Every message as its own text frame, all in one write to the socket."""
    ws = buyer.ws
    with ws.protocol_mutex:
        for m in msgs:
            ws.protocol.send_text(json_encoder.encode(m))
        ws.socket.sendall(b"".join(ws.protocol.data_to_send()))


def test_an_answer_is_applied_before_the_frames_queued_ahead_of_it(server):
    _, key = server.account("buyer", "urgent-order", 10_000)
    b = Buyer(server.ws_url, key)
    pings = [Ping(seq=i) for i in range(1, 301)]
    burst(b, [*pings, RtbBid(request_id="r-nobody-asked", bid_cents=100)])
    got: list[object] = []
    while not any(isinstance(m, Pong) and m.seq == 300 for m in got):
        got.extend(b.recv(timeout=10))
    refusal = next(i for i, m in enumerate(got) if isinstance(m, Error))
    assert got[refusal].code == "unknown_request"
    last_pong = next(i for i, m in enumerate(got) if isinstance(m, Pong) and m.seq == 300)
    assert refusal < last_pong, "the answer waited behind every frame sent before it"
    assert [m.seq for m in got if isinstance(m, Pong)] == list(range(1, 301))  # the other frames keep their order
    b.close()


def test_an_answer_behind_a_backlog_counts_in_its_round(server):
    r_id, key = server.account("buyer", "urgent-rtb", 50_000)
    b = Buyer(server.ws_url, key)
    b.request(lambda s: camp("live", 0, s, vertical="e2e_urgent", rtb=True))
    answered = threading.Event()

    def answer() -> None:
        m = b.wait_for(lambda m: type(m).__name__ == "BidRequest", timeout=10)
        burst(b, [*(Ping(seq=10_000 + i) for i in range(2_000)), RtbBid(request_id=m.request_id, bid_cents=4100)])
        answered.set()

    t = threading.Thread(target=answer)
    t.start()
    _, pub_key = server.account("publisher", "urgent-pub")
    d = server.http.post("/v1/calls", json={"caller": "+12125550100", "vertical": "e2e_urgent", "tmax_ms": 2000},
                         headers={"Authorization": f"Bearer {pub_key}"}).json()
    t.join(10)
    assert answered.is_set()
    assert d["decision"] == "routed" and d["route"]["buyer"] == r_id, d
    assert b.wait_for(lambda m: isinstance(m, Win), timeout=10).price_cents == 4100
    b.close()
