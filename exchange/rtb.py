"""The RTB desk: buyers' open sockets, bid requests fanned out, rounds, answers and notices.

A round is the live bids of one call: filled by buyers' answers until all arrive, every
buyer still awaited has gone (its socket closed: a timeout at once), or ``tmax_ms``. An
answer after its round closed is ``late_answer``; an answer that reached its socket by the
deadline, or while the exchange's loop was late to it, is read before the round closes (the
loop's lateness is the exchange's, not the buyer's); one to a request never sent is
``unknown_request``. Notices go to the buyer's oldest open connection.

A campaign with a ``ping`` (an HTTP bidder, exchange.httpbid) is asked over HTTP instead, in
the same round: its answer, mapped to a bid or to a ``no_bid`` reason, fills the round like a
socket's; none by ``tmax_ms`` is ``late``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from time import perf_counter_ns
from typing import Protocol

from .accounts import Account
from .core import Notice
from .errors import NotFound, Refused
from .ids import BuyerId, RequestId
from .httpbid import HttpBidders
from .messages import BidRequest, Message, NoBid, RtbBid
from .metrics import Metrics
from .pingspec import CallView, PingPlan, Priced

Answers = dict[str, tuple[RtbBid, int]]  # request id -> (answer, arrival sequence)
CLOSED_REMEMBERED = 100_000  # closed request ids kept to tell a late answer from an unknown one


class Sender(Protocol):
    account: Account

    def send(self, msg: object) -> bool: ...


class LateAnswer(Refused):
    """An RTB answer after its round closed: counted as a timeout."""


class RtbRound:
    __slots__ = ("expected", "via", "answers", "done", "declined", "answer_ms", "t0_ns", "http")

    def __init__(self) -> None:
        self.expected: dict[str, BuyerId] = {}  # request id -> buyer id
        self.via: dict[str, Sender] = {}  # request id -> the connection it was sent on
        self.answers: Answers = {}
        self.declined: set[str] = set()  # request ids answered with no_bid
        self.answer_ms: dict[str, int] = {}  # request id -> ms from the round's start to its answer (bid or no_bid)
        self.t0_ns = perf_counter_ns()
        self.done = asyncio.Event()
        self.http: dict[str, tuple[str, str]] = {}  # request id -> (buyer, campaign) of the pings awaited


class RtbDesk:
    __slots__ = ("metrics", "next_seq", "buyers", "rounds", "closed", "http")

    def __init__(self, metrics: Metrics, next_seq: SeqSource, http: HttpBidders | None = None) -> None:
        self.metrics = metrics
        self.http = http  # HTTP bidders: campaigns with a ping
        self.next_seq = next_seq  # the book's sequence: a live answer's time priority
        self.buyers: dict[str, list[Sender]] = {}
        self.rounds: dict[str, RtbRound] = {}
        self.closed: OrderedDict[str, str] = OrderedDict()

    # ------------------------------------------------------------------ sockets
    def attach(self, conn: Sender) -> None:
        self.buyers.setdefault(conn.account.id, []).append(conn)

    def detach(self, conn: Sender) -> None:
        conns = self.buyers.get(conn.account.id)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self.buyers[conn.account.id]
        gone = [(rid, rnd) for rid, rnd in self.rounds.items() if rnd.via.get(rid) is conn]
        for rid, rnd in gone:  # bid requests this socket can no longer answer: timeouts now, not at tmax
            buyer = rnd.expected.pop(rid)
            del rnd.via[rid], self.rounds[rid]
            self._close(rid, buyer)
            self.metrics.rtb_timeouts += 1
            if not rnd.expected:
                rnd.done.set()

    def notify(self, notices: Sequence[Notice]) -> None:
        """Send each notice to the buyer's oldest open connection (if any)."""
        buyers = self.buyers
        for buyer, msg in notices:
            conns = buyers.get(buyer)
            if conns:
                conns[0].send(msg)

    # ------------------------------------------------------------------ rounds
    async def ask(self, requests: Sequence[tuple[BuyerId, BidRequest]], tmax_ms: int,
                  caller: str | None = None) -> tuple[Answers, int, RtbRound]:
        """Send the bid requests to the buyers' sockets (or ping them over HTTP) and wait for
        their answers, at most ``tmax_ms``; returns (answers, microseconds waited, the round:
        who declined, how fast each answered). ``caller``: for a ping template that asks for it."""
        rnd = RtbRound()
        t0 = rnd.t0_ns
        plans = self.http.plans if self.http is not None else None
        try:
            for buyer, req in requests:
                plan = plans.get((buyer, req.campaign)) if plans else None
                if plan is not None:
                    self._ping(rnd, buyer, req, plan, caller, tmax_ms)
                    continue
                conns = self.buyers.get(buyer)
                if conns and conns[0].send(req):
                    rnd.expected[req.request_id] = buyer
                    rnd.via[req.request_id] = conns[0]
                    self.rounds[req.request_id] = rnd
            self.metrics.rtb_requests += len(rnd.expected)
            if rnd.expected:
                try:
                    await asyncio.wait_for(rnd.done.wait(), tmax_ms / 1000)
                except TimeoutError:
                    if rnd.expected:
                        # uvloop fires due timers before it polls the sockets: answers that arrived by the
                        # deadline (or while the loop was late to it: busy, or waiting for a core) may still
                        # be unread. Python 3.11's wait_for gives the sockets turns while it cancels its inner
                        # task, 3.12's does not (nor does asyncio.timeout, which cost late answers under load
                        # here): one more turn reads them into the round before it closes
                        await asyncio.sleep(0)
        finally:  # whatever happened (a timeout, a cancelled call, a failed send), the round is closed
            for rid, buyer in rnd.expected.items():
                self.rounds.pop(rid, None)
                self._close(rid, buyer)
                key = rnd.http.pop(rid, None)
                if key is not None and self.http is not None:
                    self.http.outcome(key, "late", None)
            self.metrics.rtb_timeouts += len(rnd.expected)
            rnd.expected = {}  # closed: a ping answering now finds nothing to fill
        return rnd.answers, (perf_counter_ns() - t0) // 1000, rnd

    def _ping(self, rnd: RtbRound, buyer: BuyerId, req: BidRequest, plan: PingPlan, caller: str | None, tmax_ms: int) -> None:
        assert self.http is not None
        rid, key = req.request_id, (buyer, req.campaign)
        c = req.call
        view = CallView(rid.rsplit(".", 1)[0], rid, req.campaign, c.vertical, c.state, c.area_code, c.direction, req.floor_cents,
                        tmax_ms, caller, c.tags)
        task = self.http.start(key, plan, view, req, tmax_ms)
        if isinstance(task, str):  # busy: a no_bid at once
            rnd.declined.add(rid)
            self.http.outcome(key, task, None)
            return
        rnd.expected[rid] = buyer
        rnd.http[rid] = key
        task.add_done_callback(lambda t: self._pinged(rnd, rid, buyer, t))

    def _pinged(self, rnd: RtbRound, rid: str, buyer: BuyerId, task: asyncio.Task[Priced | str]) -> None:
        """A ping's outcome: into its round if the round is still open (else it was ``late``)."""
        if rnd.expected.get(rid) != buyer:
            return
        key = rnd.http.pop(rid)
        result = "connect_error" if task.cancelled() else task.result()
        ms = (perf_counter_ns() - rnd.t0_ns) // 1_000_000
        assert self.http is not None
        self.http.outcome(key, result, ms)
        if isinstance(result, Priced):
            rnd.answers[rid] = (RtbBid(request_id=rid, bid_cents=result.bid_cents, destination=result.destination,
                                       min_duration_s=result.min_duration_s), self.next_seq())
            self.metrics.rtb_answers += 1
        else:
            rnd.declined.add(rid)
        rnd.answer_ms[rid] = ms
        del rnd.expected[rid]
        self._close(rid, buyer)
        if not rnd.expected:
            rnd.done.set()

    def answer(self, buyer: BuyerId, msg: RtbBid | NoBid) -> Refused | None:
        """Take one buyer's answer to a bid request; the refusal to send back, if any."""
        rid = RequestId(msg.request_id)
        rnd = self.rounds.get(rid)
        if rnd is None or rnd.expected.get(rid) != buyer:
            if self.closed.get(rid) == buyer:
                return LateAnswer("late_answer", "answer arrived after tmax_ms; counted as a timeout", "$.request_id")
            return NotFound("unknown_request", "no open bid_request with this id", "$.request_id")
        if isinstance(msg, RtbBid):
            rnd.answers[rid] = (msg, self.next_seq())
            self.metrics.rtb_answers += 1
        else:
            rnd.declined.add(rid)
        rnd.answer_ms[rid] = (perf_counter_ns() - rnd.t0_ns) // 1_000_000
        del rnd.expected[rid], rnd.via[rid]
        self.rounds.pop(rid, None)
        self._close(rid, buyer)
        if not rnd.expected:
            rnd.done.set()
        return None

    def _close(self, request_id: str, buyer: str) -> None:
        self.closed[request_id] = buyer
        while len(self.closed) > CLOSED_REMEMBERED:
            self.closed.popitem(last=False)


class SeqSource(Protocol):
    def __call__(self) -> int: ...


def send_all(conn: Sender, msgs: Sequence[Message]) -> None:
    if msgs:
        conn.send(msgs[0] if len(msgs) == 1 else msgs)
