"""The call link: an edge's calls and events reach its market's seller over one TCP connection.

This module holds what both sides share (the frames, the limits); ``exchange.edgelink`` is the
edge's side, ``exchange.linkserver`` the seller's.

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

import abc
import asyncio
import logging
import socket
import struct
from typing import Any

import msgspec

from .errors import Unavailable

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
encode = msgspec.msgpack.Encoder().encode
to_seller = msgspec.msgpack.Decoder(tuple[list[Request], list[Notice]]).decode
to_edge = msgspec.msgpack.Decoder(tuple[list[Answer], list[Notice]]).decode
hello = msgspec.msgpack.Decoder(tuple[str, str]).decode
JSON_TYPE = (b"content-type", b"application/json")


def carried(method: str, path: str) -> bool:
    """Whether a request goes over the link: a call or a call's event."""
    return method == "POST" and (path == "/v1/calls" or (path.startswith("/v1/calls/") and path.endswith("/events")))


def watch(transport: asyncio.BaseTransport) -> None:
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
    return [frame(encode((items[i:i + FRAME_REQUESTS], notices[i:i + FRAME_REQUESTS]))) for i in range(0, max(n, 1), FRAME_REQUESTS)]


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


def unreachable() -> Unavailable:
    return Unavailable("seller_unreachable", "this edge cannot reach its market's seller now: retry", retry_after_s=1)


class LinkEnd(asyncio.Protocol, metaclass=abc.ABCMeta):
    """What both ends of a link do: read frames, and send what a turn of the loop queued (requests
    or answers, and notices) as one frame."""

    def __init__(self, limit: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.frames = Frames(limit)
        self.items: list[Any] = []  # the edge's requests, or the seller's answers, for the next frame
        self.notices: list[Notice] = []
        self.flushing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        watch(transport)

    def writable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def data_received(self, data: bytes) -> None:
        frames = self.frames.feed(data)
        if frames is None:
            log.warning("node_link_bad_frame", extra={"error": "a frame over the limit"})
            self.close()
            return
        for payload in frames:
            try:
                if not self.on_frame(payload):
                    return
            except msgspec.DecodeError as exc:
                log.warning("node_link_bad_frame", extra={"error": str(exc)})
                self.close()
                return

    @abc.abstractmethod
    def on_frame(self, payload: bytes) -> bool:
        """Handle one frame (``msgspec.DecodeError``: a hostile one, the link closes); False: the
        connection was closed, read no further."""

    def notice(self, buyer: str, raw: bytes) -> None:
        self.notices.append((buyer, raw))
        self.later()

    def later(self) -> None:
        if not self.flushing:  # what this turn of the loop queues goes in one frame
            self.flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flushing = False
        items, self.items = self.items, []
        notices, self.notices = self.notices, []
        if self.transport is not None and self.writable():
            self.transport.writelines(frames_of(items, notices))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
