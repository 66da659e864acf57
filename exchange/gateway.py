"""WebSocket edges: the buyer gateway (the bid stream) and the publisher call socket.

One task per connection reads frames; each frame is decoded once into typed messages and
applied synchronously to the core (a bid is one ``Book.reprice``). Everything sent goes
through a bounded per-connection queue drained by a writer task; a full queue means a
slow consumer, which is closed (1008) without slowing anyone else.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.websockets import WebSocket

from .accounts import Account, bearer
from .book import CampaignError
from .messages import (
    Ack, Bid, Campaign, Decision, Error, Message, NoBid, Pause, Ping, Pong, PublisherCall, Resume, RtbBid,
    decode_buyer_frame, error_from_exception, json_encoder, message_path, msgpack_encoder, publisher_json,
)
from .service import CallRejected, Exchange, send_all

log = logging.getLogger("exchange.gateway")
JSON, MSGPACK = "dce.json.v1", "dce.msgpack.v1"
MAX_CALLS_IN_FLIGHT = 256


class Connection:
    """A WebSocket peer with a bounded send queue."""

    def __init__(self, ws: WebSocket, account: Account, binary: bool, queue_size: int, exchange: Exchange) -> None:
        self.ws, self.account, self.binary, self.exchange = ws, account, binary, exchange
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(queue_size)
        self.closing = False
        self.writer = asyncio.create_task(self._write())

    def send(self, msg: object) -> bool:
        if self.closing:
            return False
        data = msgpack_encoder.encode(msg) if self.binary else json_encoder.encode(msg)
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.closing = True
            self.exchange.metrics.slow_consumers_closed += 1
            log.warning('{"event":"slow_consumer_closed","account":"%s"}', self.account.id)
            asyncio.get_running_loop().create_task(self.close(1008, "send queue full: slow consumer"))
            return False
        return True

    async def _write(self) -> None:
        ws, binary = self.ws, self.binary
        try:
            while True:
                data = await self.queue.get()
                if data is None:
                    return
                await ws.send({"type": "websocket.send", "bytes": data} if binary else {"type": "websocket.send", "text": data.decode()})
        except Exception:  # peer gone: the reader notices the disconnect
            self.closing = True

    async def close(self, code: int, reason: str) -> None:
        self.closing = True
        self.writer.cancel()
        try:
            await self.ws.close(code, reason)
        except Exception:
            pass

    async def drain(self) -> None:
        """Flush what is queued, then stop the writer."""
        if not self.writer.done():
            try:
                self.queue.put_nowait(None)
                await asyncio.wait_for(self.writer, 2)
            except (asyncio.QueueFull, TimeoutError, asyncio.CancelledError):
                self.writer.cancel()


async def _open(ws: WebSocket, exchange: Exchange, role: str) -> Connection | None:
    """Authenticate in the handshake, negotiate the subprotocol and accept."""
    account = exchange.accounts.authenticate(bearer(ws.headers.get("authorization")))
    if account is None or account.kind != role:
        await ws.close(1008, "unauthorized")
        return None
    offered = ws.scope.get("subprotocols") or []
    chosen = next((p for p in offered if p in (JSON, MSGPACK)), None)
    if offered and chosen is None:
        await ws.close(1002, "unsupported subprotocol")
        return None
    await ws.accept(subprotocol=chosen)
    return Connection(ws, account, chosen == MSGPACK, exchange.settings.send_queue, exchange)


async def buyer_socket(ws: WebSocket) -> None:
    exchange: Exchange = ws.app.state.exchange
    conn = await _open(ws, exchange, "buyer")
    if conn is None:
        return
    exchange.attach(conn)
    exchange.metrics.buyer_connections += 1
    handler = BuyerFrames(exchange, conn)
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("text")
            handler.frame(data if data is not None else message.get("bytes") or b"")
    except Exception:  # a broken peer must not take the server down
        log.exception('{"event":"buyer_socket_failed"}')
    finally:
        exchange.detach(conn)
        exchange.metrics.buyer_connections -= 1
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
        msgs, replies, where = decode_buyer_frame(data, self.conn.binary)
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
            send_all(self.conn, replies)

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
    in_flight: set[asyncio.Task] = set()
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("text")
            data = data if data is not None else message.get("bytes") or b""
            try:
                decoded = publisher_json.decode(data)
            except Exception as exc:  # msgspec errors: a bad frame gets an error, the socket stays
                d = error_from_exception(exc)
                exchange.metrics.reject_message(d.code)
                conn.send(Error(code=d.code, message=d.message, path=d.path))
                continue
            for i, msg in enumerate(decoded if isinstance(decoded, list) else [decoded]):
                if isinstance(msg, Ping):
                    conn.send(Pong(seq=msg.seq))
                elif len(in_flight) >= MAX_CALLS_IN_FLIGHT:
                    conn.send(Error(code="too_many_in_flight", message="wait for decisions before sending more calls", seq=msg.seq))
                else:
                    task = asyncio.create_task(_publisher_call(exchange, conn, msg))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
    except Exception:
        log.exception('{"event":"publisher_socket_failed"}')
    finally:
        exchange.metrics.publisher_connections -= 1
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)
        await conn.drain()


async def _publisher_call(exchange: Exchange, conn: Connection, msg: PublisherCall) -> None:
    try:
        d = await exchange.submit_call(conn.account, msg)
    except CallRejected as exc:
        exchange.metrics.reject_message(exc.code)
        conn.send(Error(code=exc.code, message=str(exc), path=exc.path, seq=msg.seq))
        return
    conn.send(Decision(**{f: getattr(d, f) for f in d.__struct_fields__}, seq=msg.seq))
