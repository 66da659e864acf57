"""WebSocket edges: the buyer gateway (the bid stream) and the publisher call socket.

One task per connection reads frames (``_read_frames``, shared by both roles); each frame
is decoded once into typed messages (in the negotiated subprotocol, JSON or MessagePack),
admitted by the account's rate limit (O(1) per frame, a frame costing its number of
messages), and applied synchronously to the core (a bid is one ``Book.reprice``). Replies
and notices go through the connection's bounded send queue (``exchange.connections``).

Rate limits are per account: buyers by ``rate_limit_ws_per_s``/``rate_limit_ws_burst``
messages; publishers by the account's own HTTP bucket (``rate_limit_http_per_s``/
``rate_limit_http_burst``): a call over the socket costs what a ``POST /v1/calls`` costs, and
using both transports does not double the rate. A refused frame applies none of its messages and gets one
``rate_limited`` error; ``ws_abuse_strikes`` refusals in a row close the socket (1008).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from starlette.websockets import WebSocket

from .connections import Connection, sockets_of
from .codec import BUYER_CODECS, PUBLISHER_CODECS, decode_frame, invalid_bid, message_path
from .messages import Ack, Bid, Campaign, Decision, DecisionFields, Error, Message, NoBid, Pause, Ping, Pong, PublisherCall, Resume, RtbBid
from routing.standing import CampaignError

from . import gcpolicy
from .accounts import Account
from .errors import BadRequest, Forbidden, Invalid, RateLimited, Refused, Unauthenticated
from .access import http_limits, identify
from .http import error_response, status_of
from .ids import BuyerId
from .pingspec import PingPlan, compile_ping
from .rtb import send_all
from .calldesk import Decided
from .service import Exchange
from .ssrf import UrlRefused
from .wsrelay import relay_publisher

log = logging.getLogger("exchange.gateway")
JSON, MSGPACK = "dce.json.v1", "dce.msgpack.v1"
MAX_CALLS_IN_FLIGHT = 256
ANSWERS_PER_SEND = 100  # a frame's answers decided at once, queued (and so framed) at most this many together
CHECKING: set[asyncio.Future[None]] = set()  # ping URLs by host name being resolved before their campaign is taken


async def _open(ws: WebSocket, exchange: Exchange, role: str) -> Connection | None:
    """Authenticate in the handshake, negotiate the subprotocol, accept, and register the
    connection; while the exchange is not ready (draining) the socket is closed with 1013."""
    try:  # the same key check as HTTP: failed attempts are counted (and limited) per address
        account = identify(ws)
    except Unauthenticated as exc:  # a node of a market: the account may have been made at the seller since
        found = await _from_store(exchange, ws)
        if found is None:
            await _deny(ws, exc, 1008, "unauthorized")
            return None
        account = found
    except Refused as exc:
        await _deny(ws, exc, 1008, "too many failed attempts: retry later" if isinstance(exc, RateLimited) else "unauthorized")
        return None
    if account.kind != role:
        await _deny(ws, Forbidden("forbidden", f"this endpoint is not open to {account.kind} keys"), 1008, "unauthorized")
        return None
    offered = ws.scope.get("subprotocols") or []
    chosen = next((p for p in offered if p in (JSON, MSGPACK)), None)
    if offered and chosen is None:
        await _deny(ws, BadRequest("unsupported_subprotocol", f"offer the subprotocol {JSON} or {MSGPACK} (or none: {JSON})"),
                    1002, "unsupported subprotocol")
        return None
    await ws.accept(subprotocol=chosen)
    reg = sockets_of(exchange)
    if not (exchange.ready and reg.accepting):  # no await between this check and the registration
        await ws.close(1013, "server shutting down: reconnect later")
        return None
    if role == "buyer":
        limiter, key = reg.buyer_limit, account.id
    else:  # the account's HTTP bucket: a call costs the same token over either transport
        limiter, key = http_limits(ws).buckets, "key:" + account.id
    conn = Connection(ws, account, chosen == MSGPACK, exchange, limiter, key, reg.max_strikes)
    reg.open.add(conn)
    return conn


async def _from_store(exchange: Exchange, ws: WebSocket) -> Account | None:
    try:
        return await exchange.account_of_key(ws.headers.get("authorization"))
    except Exception as exc:  # noqa: BLE001 - the store unreachable: the key stays unknown (refused)
        log.warning("account_lookup_failed", extra={"error": str(exc)})
        return None


async def _deny(ws: WebSocket, exc: Refused, code: int, reason: str) -> None:
    """Refuse a handshake with the HTTP answer the same refusal gets over HTTP (status, JSON
    error body, ``WWW-Authenticate`` / ``Retry-After``), where the server speaks the ASGI
    denial-response extension; else a close with ``code`` and ``reason``."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        headers = dict(exc.headers or {})
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(exc.retry_after_s)
        await ws.send_denial_response(error_response(status_of(exc), exc.code, exc.message, exc.path, headers or None))
    else:
        await ws.close(code, reason)


async def _read_frames(ws: WebSocket, on_frame: Callable[[str | bytes], int], role: str, fair_share: int) -> None:
    """The one frame-reading loop: each text or binary frame to ``on_frame`` (which returns
    how many messages it held) until the peer leaves (or we close). Frames already received
    are handed over without a suspension, so after ``fair_share`` messages the reader yields
    once: a buyer with a backlog of bid frames cannot hold the loop while calls (and the
    other sockets) wait. A broken handler is logged; it must not take the server down."""
    receive = ws.receive
    budget = fair_share or -1
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            budget -= on_frame(data if data is not None else message.get("bytes") or b"")
            if budget <= 0 and fair_share:
                budget = fair_share
                await asyncio.sleep(0)
    except Exception:
        log.exception("socket_failed", extra={"role": role})


async def buyer_socket(ws: WebSocket) -> None:
    exchange: Exchange = ws.app.state.exchange
    conn = await _open(ws, exchange, "buyer")
    if conn is None:
        return
    exchange.rtb.attach(conn)
    exchange.buyer_joined(conn.account.id)
    exchange.metrics.buyer_connections += 1
    urgent = None
    try:
        frames = BuyerFrames(exchange, conn)
        urgent = ws.scope.get("extensions", {}).get("exchange.urgent") if exchange.settings.ws_urgent_answers else None
        if urgent is not None:  # RTB answers applied as they arrive, not behind queued bid frames (exchange.server)
            urgent(frames.frame)
        await _read_frames(ws, frames.frame, "buyer", exchange.settings.ws_fair_share)
    finally:
        if urgent is not None:
            urgent(None)
        exchange.rtb.detach(conn)
        exchange.buyer_left(conn.account.id)
        exchange.metrics.buyer_connections -= 1
        sockets_of(exchange).forget(conn)
        conn.writer.cancel()


class BuyerFrames:
    """Applies one buyer's frames to the core. Synchronous: this is the ingest hot path."""

    __slots__ = ("exchange", "conn", "buyer", "book", "metrics", "codecs")

    def __init__(self, exchange: Exchange, conn: Connection) -> None:
        self.exchange, self.conn = exchange, conn
        self.buyer = BuyerId(conn.account.id)
        self.book = exchange.core.book
        self.metrics = exchange.metrics
        self.codecs = BUYER_CODECS[conn.binary]

    def frame(self, data: bytes | str) -> int:
        """Apply one frame; returns its number of messages."""
        metrics = self.metrics
        metrics.frames_in += 1
        conn = self.conn
        msgs, replies, where = decode_frame(data, self.codecs)
        cost = len(msgs) + len(replies) or 1
        left = conn.allowance - cost  # Connection.admit, inlined: this is per frame
        if left >= 0:
            conn.allowance = left
        elif not conn.admit_slow(cost):  # refused: none of its messages apply
            return cost
        book, buyer = self.book, self.buyer
        applied = 0
        for i, msg in enumerate(msgs):
            if type(msg) is Bid:
                if book.reprice(buyer, msg.campaign, msg.bid_cents):
                    applied += 1
                    if msg.seq is not None:
                        replies.append(Ack(seq=msg.seq))
                else:
                    path = message_path(where, i)
                    replies.append(invalid_bid(msg, path) or _unknown_campaign(msg.campaign, path, msg.seq))
            else:
                reply = self._other(msg, message_path(where, i))
                if reply is not None:
                    replies.append(reply)
        metrics.bids_ingested += applied
        if replies:
            for r in replies:
                if type(r) is Error:
                    metrics.reject_message(r.code)
            send_all(conn, replies)
        # a raised price leaves heap entries behind (~0.2 tracked objects a bid): at 100,000 bids/s
        # beside the calls' records the young generation filled within the second between two
        # freezes, and its collections walked ~50,000 objects, 5-10 ms each, collecting nothing
        gcpolicy.relieve()
        return cost

    def _other(self, msg: Message, path: str) -> Message | None:
        book, buyer = self.book, self.buyer
        if isinstance(msg, Campaign):
            return self._campaign(msg, path)
        elif isinstance(msg, (Pause, Resume)):
            if not book.set_paused(buyer, msg.campaign, isinstance(msg, Pause)):
                return _unknown_campaign(msg.campaign, path, msg.seq)
        elif isinstance(msg, (RtbBid, NoBid)):
            err = self.exchange.answer(buyer, msg)
            if err is not None:
                return error_message(err, msg.seq, path)
        elif isinstance(msg, Ping):
            return Pong(seq=msg.seq)
        return Ack(seq=msg.seq) if msg.seq is not None else None


    def _campaign(self, msg: Campaign, path: str) -> Message | None:
        """A campaign; one with a ``ping`` is compiled and its URL checked first. A URL by host
        name is resolved before the campaign is taken: its ack (or error) comes after that."""
        plan = None
        if msg.ping is not None:
            try:
                plan = compile_ping(msg.ping, msg.rtb)
                literal = self.exchange.pings.check_literal(plan)
            except CampaignError as exc:
                return error_message(Invalid(exc.code, str(exc), exc.path), msg.seq, path)
            except UrlRefused as exc:
                return error_message(Invalid("invalid_url", str(exc), "$.ping.url"), msg.seq, path)
            if not literal:
                task = asyncio.ensure_future(self._resolved(msg, plan, path))
                CHECKING.add(task)
                task.add_done_callback(CHECKING.discard)
                return None
        return self._upsert(msg, plan, path)

    def _upsert(self, msg: Campaign, plan: PingPlan | None, path: str) -> Message | None:
        try:
            self.exchange.core.upsert_campaign(self.buyer, msg, self.exchange.clock.now_ns())
        except CampaignError as exc:  # the book's refusal, as the wire's error
            return error_message(Invalid(exc.code, str(exc), exc.path), msg.seq, path)
        self.exchange.pings.register((self.buyer, msg.id), plan)
        self.metrics.campaign_upserts += 1
        return Ack(seq=msg.seq) if msg.seq is not None else None

    async def _resolved(self, msg: Campaign, plan: PingPlan, path: str) -> None:
        try:
            await self.exchange.pings.check(plan)
            reply = self._upsert(msg, plan, path)
        except UrlRefused as exc:
            reply = error_message(Invalid("invalid_url", str(exc), "$.ping.url"), msg.seq, path)
        if reply is not None:
            if type(reply) is Error:
                self.metrics.reject_message(reply.code)
            send_all(self.conn, [reply])


def error_message(exc: Refused, seq: int | None, prefix: str = "$") -> Error:
    """The one mapping of a refusal to the WebSocket ``error`` message; its path is made
    relative to the message's place in the frame (``prefix``)."""
    path = exc.path if exc.path is None or prefix == "$" else prefix + exc.path[1:]
    return Error(code=exc.code, message=exc.message, path=path, seq=seq)


def _unknown_campaign(campaign: str, path: str, seq: int | None) -> Error:
    return Error(code="unknown_campaign", message=f"no campaign {campaign!r} of yours", path=path + ".campaign", seq=seq)


async def publisher_socket(ws: WebSocket) -> None:
    """Publishers submit calls as ``{"type":"call",...}`` and get ``{"type":"decision",...}``."""
    exchange: Exchange = ws.app.state.exchange
    conn = await _open(ws, exchange, "publisher")
    if conn is None:
        return
    exchange.metrics.publisher_connections += 1
    try:
        if exchange.node is not None and not exchange.node.selling:  # an edge: the seller decides (exchange.wsrelay)
            await relay_publisher(exchange, ws, conn, MSGPACK if conn.binary else JSON)
            return
        await _read_frames(ws, PublisherFrames(exchange, conn).frame, "publisher", exchange.settings.ws_fair_share)
    finally:
        exchange.metrics.publisher_connections -= 1
        if conn.calls:  # decisions already being made are still sent
            await asyncio.gather(*conn.calls, return_exceptions=True)
        await conn.drain()
        sockets_of(exchange).forget(conn)


class PublisherFrames:
    """Admits one publisher's frames and decides their calls (at most MAX_CALLS_IN_FLIGHT per
    socket: see ``frame``). A frame is decoded like a buyer's: in the negotiated subprotocol, each bad item of a batch
    getting its own error while the good ones go on."""

    __slots__ = ("exchange", "conn", "codecs")

    def __init__(self, exchange: Exchange, conn: Connection) -> None:
        self.exchange, self.conn = exchange, conn
        self.codecs = PUBLISHER_CODECS[conn.binary]

    def frame(self, data: bytes | str) -> int:
        """Admit one frame and decide its calls; returns its number of messages. A call that
        needs no wait (no RTB round, the writer not behind) is decided here, at once: the
        frame's calls are decided one after the other, then each decision is settled (its
        audit record and hold handed to the writer, its counts, its notices) in the same order,
        and the answers are sent together after the frame's own replies (one queue entry: one
        encode pass, one socket write). Nothing awaits in between, so nobody sees the order of
        that work. Any other call gets a task (at most MAX_CALLS_IN_FLIGHT: calls decided at
        once count as in flight during their frame, as their tasks did) and is answered when it
        is decided."""
        conn, exchange = self.conn, self.exchange
        msgs, replies, _ = decode_frame(data, self.codecs)
        cost = len(msgs) + len(replies) or 1
        if not conn.admit(cost):
            return cost
        for r in replies:  # the frame's decode errors
            if type(r) is Error:
                exchange.metrics.reject_message(r.code)
        in_flight = conn.calls
        busy = len(in_flight)
        answers: list[Message | Decision | None] = []
        made: list[tuple[int, int | None, Decided]] = []  # (place among the answers, seq, decision made)
        desk, account = exchange.desk, conn.account
        decide_now = desk.decide_now
        for msg in msgs:
            if isinstance(msg, Ping):
                replies.append(Pong(seq=msg.seq))
            elif busy >= MAX_CALLS_IN_FLIGHT:
                replies.append(Error(code="too_many_in_flight", message="wait for decisions before sending more calls", seq=msg.seq))
            else:
                busy += 1
                try:
                    d = decide_now(account, msg)
                except Refused as exc:
                    exchange.metrics.reject_message(exc.code)
                    answers.append(error_message(exc, msg.seq))
                    continue
                except Exception:  # a bug: logged; the call gets no answer, the socket goes on (as a failed task did)
                    log.exception("call_failed")
                    continue
                if isinstance(d, Decided):
                    made.append((len(answers), msg.seq, d))
                    answers.append(None)
                else:
                    task = asyncio.create_task(_publisher_call(exchange, conn, msg, d))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
        if made:  # the frame's decisions are made; now what is recorded of each, in the same order
            settle = desk.settle
            for i, seq, d in made:
                try:
                    decision = settle(d).decision
                    assert decision is not None
                    answers[i] = _answer(decision, seq)
                except Exception:  # a bug: logged, no answer (as a failed task did)
                    log.exception("call_failed")
            answers = [a for a in answers if a is not None]
        for r in replies:  # one frame each, as decisions are
            conn.send(r)
        for i in range(0, len(answers), ANSWERS_PER_SEND):
            conn.send(answers[i:i + ANSWERS_PER_SEND])
        gcpolicy.relieve()
        return cost


def _answer(d: DecisionFields, seq: int | None) -> Decision:
    return Decision(call_id=d.call_id, decision=d.decision, reason=d.reason, route=d.route, fallbacks=d.fallbacks,
                    decision_us=d.decision_us, rtb_wait_us=d.rtb_wait_us, rule=d.rule, retry_after_utc=d.retry_after_utc, seq=seq)


async def _publisher_call(exchange: Exchange, conn: Connection, msg: PublisherCall,
                          deciding: Coroutine[Any, Any, DecisionFields]) -> None:
    try:
        d = await deciding
    except Refused as exc:
        exchange.metrics.reject_message(exc.code)
        conn.send(error_message(exc, msg.seq))
        return
    conn.send(_answer(d, msg.seq))
