"""The WebSocket connections of one exchange: each peer's bounded send queue and rate limit,
the registry of open sockets, and ``close_all``, the shutdown half.

Everything sent to a peer goes through its bounded queue, drained by a writer task; a full
queue (``EXCHANGE_SEND_QUEUE`` messages or ``EXCHANGE_SEND_QUEUE_BYTES`` encoded bytes, 8 MiB:
frames of thousands of answers make a message count no bound on memory) means a slow consumer,
which is closed (1008) without slowing anyone else. Messages that
queued up while the writer was busy leave as one frame holding their array (PROTOCOL.md: a
frame holds one message or an array of messages), at most ``BATCH_MESSAGES`` messages and
``BATCH_BYTES`` bytes: one WebSocket frame and one socket write instead of one each, which
was a third of the server's CPU when publishers batch their calls.

``close_all``: stop taking sockets (1013), let calls in flight be decided, flush every send
queue, close with 1001.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from time import monotonic
from weakref import WeakKeyDictionary

from starlette.websockets import WebSocket

from .accounts import Account
from .messages import Error, json_encoder, msgpack_encoder
from .ratelimit import RateLimiter
from .service import Exchange
from .settings import Settings

log = logging.getLogger("exchange.gateway")

BATCH_MESSAGES = 256
BATCH_BYTES = 64 * 1024  # well under the 1 MiB a client library accepts by default


def batch_frame(items: list[bytes], binary: bool) -> bytes:
    """Encoded messages as one encoded array (JSON or MessagePack), without re-encoding them."""
    if not binary:
        return b"[" + b",".join(items) + b"]"
    n = len(items)
    head = bytes((0x90 | n,)) if n < 16 else b"\xdc" + n.to_bytes(2, "big") if n < 65536 else b"\xdd" + n.to_bytes(4, "big")
    return head + b"".join(items)


class Sockets:
    """The open sockets of one exchange, their per-account rate limits, and whether new
    sockets are taken (not once ``close_all`` has begun)."""

    def __init__(self, settings: Settings) -> None:
        self.open: set[Connection] = set()
        self.accepting = True
        self.buyer_limit = RateLimiter(settings.rate_limit_ws_per_s, settings.rate_limit_ws_burst)
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

    def __init__(self, ws: WebSocket, account: Account, binary: bool, exchange: Exchange, limiter: RateLimiter,
                 limit_key: str, max_strikes: int) -> None:
        self.ws, self.account, self.binary, self.exchange = ws, account, binary, exchange
        self.limiter, self.limit_key, self.max_strikes = limiter, limit_key, max_strikes
        self.allowance = 0  # messages already taken from the account's bucket, not yet used
        self.reserve = int(min(limiter.rate / 1000, limiter.burst / 100))
        self.out: deque[bytes | list[bytes] | None] = deque()  # messages to send (a list: a batch); None: stop
        self.limit = exchange.settings.send_queue
        self.max_bytes = exchange.settings.send_queue_bytes
        self.queued_bytes = 0  # encoded bytes waiting in ``out``
        self.wake: asyncio.Future | None = None  # the idle writer waits on it
        self.closing = False
        self.calls: set[asyncio.Task] = set()  # a publisher's calls being decided
        self.reader = asyncio.current_task()  # the connection's own task (the ASGI handler)
        self.writer = asyncio.create_task(self._write())

    def send(self, msg: object) -> bool:
        if self.closing:
            return False
        out = self.out
        if len(out) >= self.limit or self.queued_bytes >= self.max_bytes:
            self.closing = True
            self.exchange.metrics.slow_consumers_closed += 1
            log.warning("slow_consumer_closed", extra={"account": self.account.id})
            asyncio.get_running_loop().create_task(self.close(1008, "send queue full: slow consumer"))
            return False
        encode = msgpack_encoder.encode if self.binary else json_encoder.encode
        try:
            frame = [encode(m) for m in msg] if type(msg) is list else encode(msg)  # a list: one frame's answers
        except (OverflowError, TypeError, ValueError) as exc:  # decoding refuses what cannot be encoded; never a 500
            log.error("encode_failed", extra={"account": self.account.id, "message": type(msg).__name__, "error": str(exc)})
            return False
        self.queued_bytes += sum(map(len, frame)) if type(frame) is list else len(frame)
        out.append(frame)
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
        limiter, key = self.limiter, self.limit_key
        burst = limiter.burst
        need = cost - self.allowance
        grab = need + self.reserve
        if grab > burst:
            grab = need
        if cost > burst:  # never admitted (take() says inf) but counted as a refusal
            grab = cost
        retry_s = limiter.take(key, monotonic(), grab)
        if not retry_s:
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
            self.exchange.metrics.ws_abuse_closed += 1
            log.warning("rate_limit_abuse_closed", extra={"account": key, "strikes": strikes})
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
                first = out.popleft()
                if first is None:
                    return
                items: list[bytes] = list(first) if isinstance(first, list) else [first]
                size = sum(map(len, items))
                while out and len(items) < BATCH_MESSAGES:  # more queued: one frame for them all
                    nxt = out[0]
                    if nxt is None:
                        break
                    more = nxt if isinstance(nxt, list) else (nxt,)
                    grown = size + sum(map(len, more))
                    if grown > BATCH_BYTES:
                        break
                    out.popleft()
                    items.extend(more)
                    size = grown
                self.queued_bytes -= size
                if not items:
                    continue
                data = batch_frame(items, binary) if len(items) > 1 else items[0]
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
    while exchange.rtb.rounds and loop.time() < settle:
        await asyncio.sleep(0.01)
    await asyncio.gather(*(c.shutdown(code, reason, max(0.1, deadline - loop.time())) for c in conns), return_exceptions=True)
    readers = [r for c in conns if (r := c.reader) is not None and not r.done() and r is not asyncio.current_task()]
    if readers:  # each reader sees its disconnect and unregisters
        await asyncio.wait(readers, timeout=max(0.1, deadline - loop.time()))
    log.info("sockets_closed", extra={"count": len(conns), "code": code})
    return len(conns)
