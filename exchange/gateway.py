"""WebSocket edges: the buyer gateway (the bid stream) and the publisher call socket.

One task per connection reads frames (``_read_frames``, shared by both roles); each frame
is decoded once into typed messages, admitted by the account's rate limit (O(1) per frame,
a frame costing its number of messages), and applied synchronously to the core (a bid is
one ``Book.reprice``). Everything sent goes through a bounded per-connection queue drained
by a writer task; a full queue means a slow consumer, which is closed (1008) without
slowing anyone else.

Rate limits are per account: buyers by ``rate_limit_ws_per_s``/``rate_limit_ws_burst``
messages; publishers by a second bucket sized like the HTTP limit
(``rate_limit_http_per_s``/``rate_limit_http_burst``), since a call over the socket costs
what a ``POST /v1/calls`` costs. A refused frame applies none of its messages and gets one
``rate_limited`` error; ``ws_abuse_strikes`` refusals in a row close the socket (1008).

``close_all`` is the shutdown half: stop taking sockets (1013), let calls in flight be
decided, flush every send queue, close with 1001.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from time import monotonic
from typing import Callable
from weakref import WeakKeyDictionary

from starlette.websockets import WebSocket

from .accounts import Account
from .book import CampaignError
from .messages import (
    Ack, Bid, Campaign, Decision, Error, Message, NoBid, Pause, Ping, Pong, PublisherCall, Resume, RtbBid,
    decode_buyer_frame, error_from_exception, json_encoder, message_path, msgpack_encoder, publisher_json,
)
from .http import HttpError, identify
from .ratelimit import RateLimiter
from .service import CallRejected, Exchange, send_all
from .settings import Settings

log = logging.getLogger("exchange.gateway")
JSON, MSGPACK = "dce.json.v1", "dce.msgpack.v1"
MAX_CALLS_IN_FLIGHT = 256


class Sockets:
    """The open sockets of one exchange, their per-account rate limits, and whether new
    sockets are taken (not once ``close_all`` has begun)."""

    def __init__(self, settings: Settings) -> None:
        self.open: set[Connection] = set()
        self.accepting = True
        self.buyer_limit = RateLimiter(settings.rate_limit_ws_per_s, settings.rate_limit_ws_burst)
        self.publisher_limit = RateLimiter(settings.rate_limit_http_per_s, settings.rate_limit_http_burst)
        self.max_strikes = settings.ws_abuse_strikes

    def forget(self, conn: Connection) -> None:
        self.open.discard(conn)
        limiter = conn.limiter
        if len(limiter) > 2 * len(self.open) + 1024:  # buckets of accounts gone quiet: keep the table small
            limiter.prune(monotonic())


_sockets: WeakKeyDictionary[Exchange, Sockets] = WeakKeyDictionary()


def sockets_of(exchange: Exchange) -> Sockets:
    """The socket registry of ``exchange`` (made on first use)."""
    reg = _sockets.get(exchange)
    if reg is None:
        reg = _sockets[exchange] = Sockets(exchange.settings)
    return reg


class Connection:
    """A WebSocket peer with a bounded send queue and its account's rate limit.

    The queue is a plain deque and the writer sleeps on one future while it is empty: an
    ``asyncio.Queue`` carries three more deques and an Event (about 3 KiB per socket, a
    tenth of what a held socket costs) and its ``put_nowait`` is several times slower."""

    def __init__(self, ws: WebSocket, account: Account, binary: bool, exchange: Exchange, limiter: RateLimiter, max_strikes: int) -> None:
        self.ws, self.account, self.binary, self.exchange = ws, account, binary, exchange
        self.limiter, self.max_strikes = limiter, max_strikes
        self.allowance = 0  # messages already taken from the account's bucket, not yet used
        self.reserve = int(min(limiter.rate / 1000, limiter.burst / 100))
        self.out: deque[bytes | None] = deque()  # frames to send; None: stop after the ones before
        self.limit = exchange.settings.send_queue
        self.wake: asyncio.Future | None = None  # the idle writer waits on it
        self.closing = False
        self.calls: set[asyncio.Task] = set()  # a publisher's calls being decided
        self.reader = asyncio.current_task()  # the connection's own task (the ASGI handler)
        self.writer = asyncio.create_task(self._write())

    def send(self, msg: object) -> bool:
        if self.closing:
            return False
        out = self.out
        if len(out) >= self.limit:
            self.closing = True
            self.exchange.metrics.slow_consumers_closed += 1
            log.warning('{"event":"slow_consumer_closed","account":"%s"}', self.account.id)
            asyncio.get_running_loop().create_task(self.close(1008, "send queue full: slow consumer"))
            return False
        out.append(msgpack_encoder.encode(msg) if self.binary else json_encoder.encode(msg))
        self._wake()
        return True

    def _wake(self) -> None:
        wake = self.wake
        if wake is not None:
            self.wake = None
            if not wake.done():
                wake.set_result(None)

    def admit(self, cost: int) -> bool:
        """Spend ``cost`` messages of the account's rate limit: O(1) per frame, and on most
        frames only an integer subtraction from this connection's ``allowance`` (tokens
        already taken from the account's bucket; see ``admit_slow``)."""
        left = self.allowance - cost
        if left >= 0:
            self.allowance = left
            return True
        return self.admit_slow(cost)

    def admit_slow(self, cost: int) -> bool:
        """Take what this frame lacks from the account's bucket plus a small ``reserve``
        (about a millisecond of refill) in one ``take``, so the bucket (a clock read and a
        dict update) is visited once per ``reserve`` messages, not once per frame. Near the
        limit this refuses at most ``reserve`` messages early. A refusal is answered with one
        ``rate_limited`` error and closes the socket (1008) once the account has had
        ``max_strikes`` frames refused in a row."""
        limiter, key = self.limiter, self.account.id
        burst = limiter.burst
        need = cost - self.allowance
        grab = need + self.reserve
        if grab > burst:
            grab = need
        if cost > burst:  # never admitted; take() still counts the refusal
            grab = cost
        retry_s = limiter.take(key, monotonic(), grab)
        if not retry_s and cost <= burst:  # take() may say 0.0 for a refused frame over the burst
            self.allowance = grab - need
            return True
        self.allowance = 0  # the next frame goes to the bucket, whose success ends the strikes
        self.exchange.metrics.reject_message("rate_limited")
        if cost > burst:
            text = f"a frame of {cost} messages is over the limit of {burst:.0f} messages per burst: send smaller frames"
        else:
            text = (f"rate limit of {limiter.rate:.0f} messages/s per account exceeded: none of this frame's {cost} "
                    f"messages were applied; retry in {math.ceil(retry_s * 1000)} ms")
        self.send(Error(code="rate_limited", message=text))
        strikes = limiter.strikes(key)
        if strikes >= self.max_strikes and not self.closing:
            self.closing = True
            log.warning('{"event":"rate_limit_abuse_closed","account":"%s","strikes":%d}', key, strikes)
            asyncio.get_running_loop().create_task(self.close(1008, f"rate limit exceeded: {strikes} frames refused in a row"))
        return False

    async def _write(self) -> None:
        ws, binary, out = self.ws, self.binary, self.out
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not out:
                    self.wake = wake = loop.create_future()
                    await wake
                    continue
                data = out.popleft()
                if data is None:
                    return
                await ws.send({"type": "websocket.send", "bytes": data} if binary else {"type": "websocket.send", "text": data.decode()})
        except Exception:  # peer gone: the reader notices the disconnect
            self.closing = True

    async def close(self, code: int, reason: str) -> None:
        """Close now: what is still queued is dropped (a slow consumer, an abuser)."""
        self.closing = True
        self.writer.cancel()
        try:
            await self.ws.close(code, reason)
        except Exception:
            pass

    async def drain(self, timeout_s: float = 2.0) -> None:
        """Take nothing more, flush what is queued (at most ``timeout_s``), stop the writer."""
        self.closing = True  # send() adds nothing after the stop mark
        writer = self.writer
        if not writer.done():
            self.out.append(None)
            self._wake()
            await asyncio.wait({writer}, timeout=timeout_s)
            writer.cancel()

    async def shutdown(self, code: int, reason: str, timeout_s: float) -> None:
        """Flush the send queue (bounded), then close with ``code``."""
        await self.drain(timeout_s)
        try:
            await self.ws.close(code, reason)
        except Exception:  # already closed by the peer or by us
            pass


async def _open(ws: WebSocket, exchange: Exchange, role: str) -> Connection | None:
    """Authenticate in the handshake, negotiate the subprotocol, accept, and register the
    connection; while the exchange is not ready (draining) the socket is closed with 1013."""
    try:  # the same key check as HTTP: failed attempts are counted (and limited) per address
        account = identify(ws)
    except HttpError as exc:
        await ws.close(1008, "too many failed attempts: retry later" if exc.status == 429 else "unauthorized")
        return None
    if account.kind != role:
        await ws.close(1008, "unauthorized")
        return None
    offered = ws.scope.get("subprotocols") or []
    chosen = next((p for p in offered if p in (JSON, MSGPACK)), None)
    if offered and chosen is None:
        await ws.close(1002, "unsupported subprotocol")
        return None
    await ws.accept(subprotocol=chosen)
    reg = sockets_of(exchange)
    if not (exchange.ready and reg.accepting):  # no await between this check and the registration
        await ws.close(1013, "server shutting down: reconnect later")
        return None
    limiter = reg.buyer_limit if role == "buyer" else reg.publisher_limit
    conn = Connection(ws, account, chosen == MSGPACK, exchange, limiter, reg.max_strikes)
    reg.open.add(conn)
    return conn


async def _read_frames(ws: WebSocket, on_frame: Callable[[str | bytes], None], role: str) -> None:
    """The one frame-reading loop: each text or binary frame to ``on_frame`` until the peer
    leaves (or we close). A broken handler is logged; it must not take the server down."""
    receive = ws.receive
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            on_frame(data if data is not None else message.get("bytes") or b"")
    except Exception:
        log.exception('{"event":"%s_socket_failed"}', role)


async def buyer_socket(ws: WebSocket) -> None:
    exchange: Exchange = ws.app.state.exchange
    conn = await _open(ws, exchange, "buyer")
    if conn is None:
        return
    exchange.attach(conn)
    exchange.metrics.buyer_connections += 1
    try:
        await _read_frames(ws, BuyerFrames(exchange, conn).frame, "buyer")
    finally:
        exchange.detach(conn)
        exchange.metrics.buyer_connections -= 1
        sockets_of(exchange).forget(conn)
        conn.writer.cancel()


class BuyerFrames:
    """Applies one buyer's frames to the core. Synchronous: this is the ingest hot path."""

    __slots__ = ("exchange", "conn", "buyer", "book", "metrics")

    def __init__(self, exchange: Exchange, conn: Connection) -> None:
        self.exchange, self.conn = exchange, conn
        self.buyer = conn.account.id
        self.book = exchange.core.book
        self.metrics = exchange.metrics

    def frame(self, data: bytes | str) -> None:
        metrics = self.metrics
        metrics.frames_in += 1
        conn = self.conn
        msgs, replies, where = decode_buyer_frame(data, conn.binary)
        cost = len(msgs) + len(replies) or 1
        left = conn.allowance - cost  # Connection.admit, inlined: this is per frame
        if left >= 0:
            conn.allowance = left
        elif not conn.admit_slow(cost):  # refused: none of its messages apply
            return
        book, buyer = self.book, self.buyer
        applied = 0
        for i, msg in enumerate(msgs):
            if type(msg) is Bid:
                if book.reprice(buyer, msg.campaign, msg.bid_cents):
                    applied += 1
                    if msg.seq is not None:
                        replies.append(Ack(seq=msg.seq))
                else:
                    replies.append(_unknown_campaign(msg.campaign, message_path(where, i), msg.seq))
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

    def _other(self, msg: Message, path: str) -> Message | None:
        book, buyer = self.book, self.buyer
        if isinstance(msg, Campaign):
            try:
                book.upsert(buyer, msg)
            except CampaignError as exc:
                return Error(code=exc.code, message=str(exc), path=path + exc.path[1:], seq=msg.seq)
            self.metrics.campaign_upserts += 1
        elif isinstance(msg, (Pause, Resume)):
            if not book.set_paused(buyer, msg.campaign, isinstance(msg, Pause)):
                return _unknown_campaign(msg.campaign, path, msg.seq)
        elif isinstance(msg, (RtbBid, NoBid)):
            err = self.exchange.on_rtb_answer(buyer, msg)
            if err is not None:
                return Error(code=err.code, message=err.message, path=path + ".request_id", seq=msg.seq)
        elif isinstance(msg, Ping):
            return Pong(seq=msg.seq)
        return Ack(seq=msg.seq) if msg.seq is not None else None


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
        await _read_frames(ws, PublisherFrames(exchange, conn).frame, "publisher")
    finally:
        exchange.metrics.publisher_connections -= 1
        if conn.calls:  # decisions already being made are still sent
            await asyncio.gather(*conn.calls, return_exceptions=True)
        await conn.drain()
        sockets_of(exchange).forget(conn)


class PublisherFrames:
    """Admits one publisher's frames and starts a task per call (at most MAX_CALLS_IN_FLIGHT)."""

    __slots__ = ("exchange", "conn")

    def __init__(self, exchange: Exchange, conn: Connection) -> None:
        self.exchange, self.conn = exchange, conn

    def frame(self, data: bytes | str) -> None:
        conn, exchange = self.conn, self.exchange
        try:
            decoded = publisher_json.decode(data)
        except Exception as exc:  # msgspec errors: a bad frame gets an error, the socket stays
            if conn.admit(1):
                d = error_from_exception(exc)
                exchange.metrics.reject_message(d.code)
                conn.send(Error(code=d.code, message=d.message, path=d.path))
            return
        msgs = decoded if isinstance(decoded, list) else [decoded]
        if not conn.admit(len(msgs) or 1):
            return
        in_flight = conn.calls
        for msg in msgs:
            if isinstance(msg, Ping):
                conn.send(Pong(seq=msg.seq))
            elif len(in_flight) >= MAX_CALLS_IN_FLIGHT:
                conn.send(Error(code="too_many_in_flight", message="wait for decisions before sending more calls", seq=msg.seq))
            else:
                task = asyncio.create_task(_publisher_call(exchange, conn, msg))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)


async def _publisher_call(exchange: Exchange, conn: Connection, msg: PublisherCall) -> None:
    try:
        d = await exchange.submit_call(conn.account, msg)
    except CallRejected as exc:
        exchange.metrics.reject_message(exc.code)
        conn.send(Error(code=exc.code, message=str(exc), path=exc.path, seq=msg.seq))
        return
    conn.send(Decision(**{f: getattr(d, f) for f in d.__struct_fields__}, seq=msg.seq))


async def close_all(exchange: Exchange, code: int = 1001, reason: str = "server shutting down", timeout_s: float = 5.0) -> int:
    """Graceful shutdown of the WebSocket edges; returns how many sockets were closed.

    New sockets are refused from the first moment (1013). Publisher calls in flight are
    decided first (their RTB buyers are still connected to answer), open RTB rounds (HTTP
    calls too) get up to ``rtb_tmax_cap_ms`` to settle, then every socket's send queue is
    flushed and the socket closed with ``code``. Every wait is bounded by ``timeout_s`` in all.
    """
    reg = sockets_of(exchange)
    reg.accepting = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    conns = list(reg.open)
    calls = [t for c in conns for t in c.calls]
    if calls:
        await asyncio.wait(calls, timeout=max(0.0, deadline - loop.time()))
    settle = min(deadline, loop.time() + exchange.settings.rtb_tmax_cap_ms / 1000 + 0.05)
    while exchange.rounds and loop.time() < settle:
        await asyncio.sleep(0.01)
    await asyncio.gather(*(c.shutdown(code, reason, max(0.1, deadline - loop.time())) for c in conns), return_exceptions=True)
    readers = [r for c in conns if (r := c.reader) is not None and not r.done() and r is not asyncio.current_task()]
    if readers:  # each reader sees its disconnect and unregisters
        await asyncio.wait(readers, timeout=max(0.1, deadline - loop.time()))
    log.info('{"event":"sockets_closed","count":%d,"code":%d}', len(conns), code)
    return len(conns)
