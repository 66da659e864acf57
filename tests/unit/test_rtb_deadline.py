"""An RTB answer that reached the exchange's socket in time counts, even when the exchange's own
loop was late to read it (a stall: the host short of cores, a long callback).

uvloop (the server's loop) runs due timers before it polls the sockets. When the loop was busy
in its poll phase (other sockets' data: buyers' bid frames parsed as they are read) past a
round's deadline, and the answer arrived meanwhile, the next turn fired the deadline first and
closed the round while the answer, in time, still sat unread in its socket: the buyer got
``late_answer`` for the exchange's lateness (Python 3.11's ``wait_for`` happens to give the sockets
turns while it cancels its inner task; 3.12's and a bare ``asyncio.timeout`` do not: the desk takes
one turn itself). Real socket pairs and a real uvloop loop here: the
answer is written 10 ms after the request by another thread, while the loop is held 500 ms by
another socket's read callback.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import uvloop

from exchange.accounts import Account
from exchange.ids import BuyerId
from exchange.messages import BidRequest, CallInfo, RtbBid, json_encoder
from exchange.metrics import Metrics
from exchange.rtb import RtbDesk

TMAX_MS = 100


class SocketBuyer:
    """A buyer whose answer is written to a real socket at once, read by the loop when it polls."""

    def __init__(self, desk: RtbDesk, stall_s: float) -> None:
        self.account = Account("b1", "buyer", "b1")
        self.desk, self.stall_s = desk, stall_s
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        asyncio.get_running_loop().add_reader(self.ours.fileno(), self._readable)
        self.busy_ours, self.busy_theirs = socket.socketpair()
        asyncio.get_running_loop().add_reader(self.busy_ours.fileno(), self._busy)

    def send(self, msg: object) -> bool:
        assert isinstance(msg, BidRequest)
        answer = json_encoder.encode(RtbBid(request_id=msg.request_id, bid_cents=1234))
        threading.Timer(0.01, self.theirs.sendall, (answer,)).start()  # answered within 10 ms
        if self.stall_s:
            self.busy_theirs.send(b"x")  # another socket's data, whose handling holds the loop
        return True

    def _busy(self) -> None:
        self.busy_ours.recv(16)
        time.sleep(self.stall_s)

    def _readable(self) -> None:
        data = self.ours.recv(65536)
        self.refusal = self.desk.answer(BuyerId("b1"), RtbBid(request_id=data.decode().split('"request_id":"')[1].split('"')[0],
                                                              bid_cents=1234))

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for ours, theirs in ((self.ours, self.theirs), (self.busy_ours, self.busy_theirs)):
            loop.remove_reader(ours.fileno())
            ours.close()
            theirs.close()


async def _round(stall_s: float) -> tuple[dict, object]:
    desk = RtbDesk(Metrics(), iter(range(1, 10**6)).__next__)
    buyer = SocketBuyer(desk, stall_s)
    desk.attach(buyer)
    req = BidRequest(request_id="call1.0", campaign="c1", tmax_ms=TMAX_MS, floor_cents=0,
                     call=CallInfo(vertical="v", state=None, area_code=None, direction="inbound", tags={}, attestation=None))
    try:
        answers, _, _ = await desk.ask([(BuyerId("b1"), req)], TMAX_MS)
        await asyncio.sleep(0.05)
        return answers, getattr(buyer, "refusal", None)
    finally:
        buyer.close()


def test_an_answer_in_the_socket_before_the_deadline_counts_after_a_stall_of_the_loop():
    answers, refusal = uvloop.run(_round(stall_s=5 * TMAX_MS / 1000))
    assert refusal is None, refusal
    assert answers["call1.0"][0].bid_cents == 1234


def test_without_a_stall_the_answer_counts_as_ever():
    answers, refusal = uvloop.run(_round(stall_s=0))
    assert refusal is None and answers["call1.0"][0].bid_cents == 1234
