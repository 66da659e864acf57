"""The call link: an edge's calls and events reach its market's seller over one TCP connection.

An edge forwards its HTTP API to the seller (``exchange.forward``). For the two requests that
are most of a publisher's traffic, ``POST /v1/calls`` and ``POST /v1/calls/{id}/events``, one
HTTP request per request cost both nodes a parse and an answer (uvicorn's on the seller,
aiohttp's on the edge). A WebSocket in their place saved the edge some of that and cost the
seller more than HTTP did (the ``websockets`` framing is Python on both sides: ``bench.nodes
--profiles calls``). Here they go as length-prefixed MessagePack frames on a plain TCP connection the
edge holds to the seller's link listener: the requests queued in one turn of the edge's loop
share a frame, and so do the seller's answers. The seller runs each request through the same
ASGI app an HTTP request reaches (``CallPath``: the same key check, rate limits, validation and
idempotency), with the client's address as its own, and sends back the status, headers and
body it produced; the edge answers its client with them, as it does an HTTP forward.

Every node listens (``EXCHANGE_LINK_PORT`` on ``EXCHANGE_HOST``; 0, the default, lets the system
choose) and puts the port in its lease, beside its HTTP address; only a seller serves requests.
An edge opens the link as soon as it knows its seller and keeps it open. A connection's first
frame is ``[secret, node]``: the market's link secret (a random token the first node put in the
market's Redis: whoever can read that is of the market) and the edge's node id; the seller
answers ``ok`` or closes it.

The link also carries what the market's Redis channels carry between the seller and that edge
(``exchange.market``): the seller's notices and bid requests for the edge's buyers, and their
RTB answers back, a frame per turn of the loop instead of a ``PUBLISH`` each; while the link is
down they go over Redis as before.

Frames: a 4-byte big-endian length, then a MessagePack array:

- edge -> seller: ``[requests, answers]``: ``requests`` as ``[[rid, method, path, query,
  headers, body, client_host], ...]`` with ``headers`` as ``[[name, value], ...]`` (bytes,
  lower-case names); ``answers`` (RTB) as ``[[buyer, message JSON], ...]``;
- seller -> edge: ``[answers, notices]``: ``answers`` as ``[[rid, status, headers, body], ...]``,
  ``notices`` as ``[[buyer, message JSON], ...]``.

A request whose body does not fit a frame's share (``BODY_MAX``), or any request while the link
cannot be opened (for a second after a failed attempt, or while the seller announces no link
port), goes over HTTP as before. A request in flight when the link drops is answered 503
``seller_unreachable``, like an HTTP forward whose connection failed: the seller may have applied
it, and an ``Idempotency-Key`` makes its retry safe. Notices are fire-and-forget on either path
(a lost one costs a buyer a message, not money: the call and its charge are the seller's).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, MutableMapping
from time import monotonic
from typing import TYPE_CHECKING, Any

import msgspec

from .errors import Unavailable
from .messages import ErrorBody, ErrorDetail, json_encoder

if TYPE_CHECKING:
    from .service import Exchange

log = logging.getLogger("exchange.nodelink")
LENGTH = struct.Struct(">I")
OK = b"ok"
BODY_MAX = 64 << 10  # a request's body beyond this goes over HTTP
FRAME_REQUESTS = 256  # requests (or answers) in one frame at most
MAX_FRAME = 64 << 20  # a longer frame closes the connection
HELLO_MAX = 1024  # the first frame (the secret) at most
HELLO_TIMEOUT_S = 5.0  # a connection that has not sent it by then is closed
OPEN_TIMEOUT_S = 2.0
ANSWER_TIMEOUT_S = 30.0  # as the HTTP forward's total timeout
RETRY_AFTER_FAILED_S = 1.0  # after a failed open, requests go over HTTP this long before the link is tried again
BACKLOG_BYTES = 8 << 20  # a seller queues no more notices on a link with this much unsent
IN_FLIGHT_PAUSE = 4096  # a seller stops reading a connection with this many requests running

Headers = list[tuple[bytes, bytes]]
Request = tuple[int, str, str, bytes, list[tuple[bytes, bytes]], bytes, str]
Answer = tuple[int, int, list[tuple[bytes, bytes]], bytes]
Notice = tuple[str, bytes]  # (buyer, message JSON): a notice or bid request, or (edge -> seller) an RTB answer
_encode = msgspec.msgpack.Encoder().encode
_to_seller = msgspec.msgpack.Decoder(tuple[list[Request], list[Notice]]).decode
_to_edge = msgspec.msgpack.Decoder(tuple[list[Answer], list[Notice]]).decode
_hello = msgspec.msgpack.Decoder(tuple[str, str]).decode
_JSON = (b"content-type", b"application/json")


def carried(method: str, path: str) -> bool:
    """Whether a request goes over the link: a call or a call's event."""
    return method == "POST" and (path == "/v1/calls" or (path.startswith("/v1/calls/") and path.endswith("/events")))


def _watch(transport: asyncio.BaseTransport) -> None:
    """A peer gone without a word (its host down, a partition) closes the connection within
    ~10 s, so requests in flight get their 503 and the edge opens the link again: data unacknowledged
    for ``TCP_USER_TIMEOUT``, or an idle connection's keepalive probes unanswered."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for level, name, value in ((socket.SOL_SOCKET, "SO_KEEPALIVE", 1), (socket.IPPROTO_TCP, "TCP_KEEPIDLE", 4),
                               (socket.IPPROTO_TCP, "TCP_KEEPINTVL", 2), (socket.IPPROTO_TCP, "TCP_KEEPCNT", 3),
                               (socket.IPPROTO_TCP, "TCP_USER_TIMEOUT", 10_000), (socket.IPPROTO_TCP, "TCP_NODELAY", 1)):
        option = getattr(socket, name, None)
        if option is not None:
            try:
                sock.setsockopt(level, option, value)
            except OSError:
                pass


def frame(payload: bytes) -> bytes:
    return LENGTH.pack(len(payload)) + payload


def frames_of(items: list[Any], notices: list[Notice]) -> list[bytes]:
    """``[items, notices]`` frames, at most ``FRAME_REQUESTS`` of each in one."""
    n = max(len(items), len(notices))
    return [frame(_encode((items[i:i + FRAME_REQUESTS], notices[i:i + FRAME_REQUESTS]))) for i in range(0, max(n, 1), FRAME_REQUESTS)]


class Frames:
    """Length-prefixed frames out of a byte stream."""

    __slots__ = ("buf", "limit")

    def __init__(self, limit: int) -> None:
        self.buf = bytearray()
        self.limit = limit

    def feed(self, data: bytes) -> list[bytes] | None:
        """The frames completed by ``data``; None: a frame over the limit (close the connection)."""
        buf = self.buf
        buf += data
        out: list[bytes] = []
        at = 0
        while len(buf) - at >= 4:
            (n,) = LENGTH.unpack_from(buf, at)
            if n > self.limit:
                return None
            if len(buf) - at - 4 < n:
                break
            out.append(bytes(buf[at + 4:at + 4 + n]))
            at += 4 + n
        if at:
            del buf[:at]
        return out


# ---------------------------------------------------------------- the edge's side
class EdgeLink:
    """The edge's one connection to the seller, kept open (``keep``) and opened again after it drops."""

    __slots__ = ("ex", "on_notice", "where", "proto", "failed_at", "opening")

    def __init__(self, ex: Exchange, on_notice: Callable[[str, bytes], None]) -> None:
        self.ex, self.on_notice = ex, on_notice
        self.where: tuple[str, int] | None = None
        self.proto: _EdgeProtocol | None = None
        self.failed_at = -RETRY_AFTER_FAILED_S
        self.opening: asyncio.Future[_EdgeProtocol | None] | None = None

    async def request(self, method: str, path: str, query: bytes, headers: Headers, body: bytes,
                      host: str) -> tuple[int, Headers, bytes] | None:
        """The seller's answer over the link; None: the link is not open (send it over HTTP)."""
        if len(body) > BODY_MAX:
            return None
        proto = await self._open()
        if proto is None:
            return None
        return await proto.request(method, path, query, headers, body, host)

    def answer(self, buyer: str, raw: bytes) -> bool:
        """An RTB answer for the seller's round, if the link is open (False: send it over Redis)."""
        proto = self.proto
        if proto is None or not proto.open or self.where != self._seller():
            return False
        proto.notice(buyer, raw)
        self.ex.metrics.node_link_notices += 1
        return True

    async def keep(self) -> None:
        """Open the link whenever the seller is known and it is not open (every second)."""
        while True:
            await self._open()
            await asyncio.sleep(RETRY_AFTER_FAILED_S)

    def _seller(self) -> tuple[str, int] | None:
        found = self.ex.node.seller_host() if self.ex.node is not None else None
        port = found[1].get("link") if found is not None else None
        return (found[0], port) if found is not None and isinstance(port, int) else None  # (no port: a seller without a link)

    async def _open(self) -> _EdgeProtocol | None:
        where = self._seller()
        if where is None:
            return None
        proto = self.proto
        if proto is not None and proto.open and self.where == where:
            return proto
        if self.opening is not None:
            return await asyncio.shield(self.opening)
        if monotonic() - self.failed_at < RETRY_AFTER_FAILED_S:
            return None
        opening = self.opening = asyncio.get_running_loop().create_future()
        try:
            if proto is not None:
                proto.close()
            self.proto = None
            node = self.ex.node
            hello = _encode((node.link_secret, node.id)) if node is not None else b""
            got: _EdgeProtocol | None = None
            try:
                async with asyncio.timeout(OPEN_TIMEOUT_S):
                    _, got = await asyncio.get_running_loop().create_connection(lambda: _EdgeProtocol(self.on_notice), *where)
                    got.transport.write(frame(hello))  # type: ignore[union-attr]
                    await got.ready
            except (OSError, TimeoutError, ConnectionError) as exc:
                if got is not None:
                    got.close()
                got = None
                self.failed_at = monotonic()
                log.warning("node_link_failed", extra={"seller": f"{where[0]}:{where[1]}", "error": str(exc) or type(exc).__name__})
            if got is not None:
                self.proto, self.where = got, where
                log.info("node_link_open", extra={"seller": f"{where[0]}:{where[1]}"})
            opening.set_result(got)
            return got
        finally:
            self.opening = None

    async def close(self) -> None:
        if self.proto is not None:
            self.proto.close()
            self.proto = None


class _EdgeProtocol(asyncio.Protocol):
    def __init__(self, on_notice: Callable[[str, bytes], None]) -> None:
        self.on_notice = on_notice
        self.transport: asyncio.Transport | None = None
        self.frames = Frames(MAX_FRAME)
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.open = False
        self.pending: dict[int, asyncio.Future[tuple[int, Headers, bytes]]] = {}
        self.queue: list[Request] = []
        self.notices: list[Notice] = []
        self.next_id = 0
        self.flushing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _watch(transport)

    async def request(self, method: str, path: str, query: bytes, headers: Headers, body: bytes,
                      host: str) -> tuple[int, Headers, bytes]:
        if not self.open:
            raise _unreachable()
        rid = self.next_id = self.next_id + 1
        fut: asyncio.Future[tuple[int, Headers, bytes]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        self.queue.append((rid, method, path, query, headers, body, host))
        self._later()
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                return await fut
        except TimeoutError:
            raise _unreachable() from None
        finally:
            self.pending.pop(rid, None)

    def notice(self, buyer: str, raw: bytes) -> None:
        self.notices.append((buyer, raw))
        self._later()

    def _later(self) -> None:
        if not self.flushing:  # what this turn of the loop queues goes in one frame
            self.flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flushing = False
        queue, self.queue = self.queue, []
        notices, self.notices = self.notices, []
        if self.transport is None or not self.open:
            return
        self.transport.writelines(frames_of(queue, notices))

    def data_received(self, data: bytes) -> None:
        frames = self.frames.feed(data)
        if frames is None:
            log.warning("node_link_bad_frame", extra={"error": "a frame over the limit"})
            self.close()
            return
        for payload in frames:
            if not self.open:
                if payload == OK:
                    self.open = True
                    if not self.ready.done():
                        self.ready.set_result(None)
                    continue
                self.close()
                return
            try:
                answers, notices = _to_edge(payload)
            except msgspec.DecodeError as exc:
                log.warning("node_link_bad_frame", extra={"error": str(exc)})
                self.close()
                return
            pending = self.pending
            for rid, status, headers, body in answers:
                fut = pending.get(rid)
                if fut is not None and not fut.done():
                    fut.set_result((status, headers, body))
            for buyer, raw in notices:
                try:
                    self.on_notice(buyer, raw)
                except Exception:  # a bad notice must not stop the link
                    log.exception("node_link_notice_failed")

    def connection_lost(self, exc: Exception | None) -> None:
        """Gone: every request sent and not answered gets a 503."""
        was = self.open
        self.open = False
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("the seller closed the link (not the seller, or another market's secret)"))
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(_unreachable())
        if was:
            log.warning("node_link_lost", extra={"error": str(exc) if exc else "closed"})

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _unreachable() -> Unavailable:
    return Unavailable("seller_unreachable", "this edge cannot reach its market's seller now: retry", retry_after_s=1)


# ---------------------------------------------------------------- the seller's side
Scope = MutableMapping[str, Any]
App = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class LinkServer:
    """A node's link listener (every node listens; only the seller serves, see the module)."""

    def __init__(self, ex: Exchange, app: App) -> None:
        self.ex, self.app = ex, app
        self.server: asyncio.Server | None = None
        self.conns: set[_SellerProtocol] = set()
        self.edges: dict[str, _SellerProtocol] = {}  # node id -> its open link

    def to_edge(self, node: str, buyer: str, raw: bytes) -> bool:
        """A notice for a buyer on that edge, if its link is open (False: send it over Redis)."""
        conn = self.edges.get(node)
        if conn is None or conn.transport is None:
            return False
        transport = conn.transport
        if transport.is_closing() or transport.get_write_buffer_size() > BACKLOG_BYTES:
            return False  # (an edge that stopped reading: Redis's bounded queue takes over, and drops when full)
        conn.notice(buyer, raw)
        self.ex.metrics.node_link_notices += 1
        return True

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.get_running_loop().create_server(lambda: _SellerProtocol(self), host, port)
        return int(self.server.sockets[0].getsockname()[1])

    def secret_ok(self, given: str) -> bool:
        node = self.ex.node
        return bool(node is not None and node.selling and node.link_secret and hmac.compare_digest(given.encode(), node.link_secret.encode()))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for conn in list(self.conns):
                conn.close()
            await self.server.wait_closed()


class _SellerProtocol(asyncio.Protocol):
    def __init__(self, server: LinkServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.frames = Frames(HELLO_MAX)
        self.node = ""  # the edge's id, from its first frame
        self.closed = asyncio.get_running_loop().create_future()
        self.answers: list[Answer] = []
        self.notices: list[Notice] = []
        self.flushing = False
        self.running = 0
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _watch(transport)
        self.server.conns.add(self)
        asyncio.get_running_loop().call_later(HELLO_TIMEOUT_S, self._hello_due)

    def _hello_due(self) -> None:
        if not self.node:  # silent, or still sending its first frame: a client of nobody's
            self.close()

    def data_received(self, data: bytes) -> None:
        frames = self.frames.feed(data)
        if frames is None:
            log.warning("node_link_bad_frame", extra={"error": "a frame over the limit"})
            self.close()
            return
        for payload in frames:
            if not self.node:
                try:
                    secret, node = _hello(payload)
                except msgspec.DecodeError:
                    secret, node = "", ""
                if not node or not self.server.secret_ok(secret):
                    log.warning("node_link_refused", extra={"peer": str(self.transport.get_extra_info("peername") if self.transport else "")})
                    self.close()
                    return
                self.node = node
                old = self.server.edges.get(node)
                self.server.edges[node] = self
                if old is not None:
                    old.close()
                self.frames.limit = MAX_FRAME
                self.transport.write(frame(OK))  # type: ignore[union-attr]
                continue
            try:
                requests, answers = _to_seller(payload)
            except msgspec.DecodeError as exc:
                log.warning("node_link_bad_frame", extra={"error": str(exc)})
                self.close()
                return
            market = self.server.ex.link
            for buyer, raw in answers:
                try:
                    if market is not None:
                        market.rtb_answer(self.node, buyer, raw)
                except Exception:  # a bad answer must not stop the link
                    log.exception("node_link_answer_failed")
            for request in requests:
                self.running += 1
                asyncio.ensure_future(self._one(request))
            if self.running >= IN_FLIGHT_PAUSE and not self.paused and self.transport is not None:
                self.paused = True
                self.transport.pause_reading()

    async def _one(self, request: Request) -> None:
        rid, method, path, query, headers, body, host = request
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
                 "root_path": "", "headers": headers, "client": (host, 0), "server": None}
        out: list[Any] = [500, [], []]
        given = [False]
        closed = self.closed

        async def receive() -> dict[str, Any]:
            if not given[0]:
                given[0] = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.shield(closed)
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                out[0], out[1] = message["status"], list(message.get("headers") or ())
            elif message["type"] == "http.response.body":
                out[2].append(message.get("body", b""))

        try:
            await self.server.app(scope, receive, send)
            answer: Answer = (rid, out[0], out[1], b"".join(out[2]))
        except Exception:
            log.exception("node_link_request_failed", extra={"path": path})
            answer = (rid, 500, [_JSON], json_encoder.encode(ErrorBody(error=ErrorDetail(
                code="internal_error", message="the exchange failed to handle this request"))))
        finally:
            self.running -= 1
            if self.paused and self.running < IN_FLIGHT_PAUSE // 2 and self.transport is not None:
                self.paused = False
                self.transport.resume_reading()
        self.answers.append(answer)
        self._later()

    def notice(self, buyer: str, raw: bytes) -> None:
        self.notices.append((buyer, raw))
        self._later()

    def _later(self) -> None:
        if not self.flushing:  # what this turn of the loop queues goes in one frame
            self.flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flushing = False
        answers, self.answers = self.answers, []
        notices, self.notices = self.notices, []
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.writelines(frames_of(answers, notices))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)
        if self.node and self.server.edges.get(self.node) is self:
            del self.server.edges[self.node]
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
