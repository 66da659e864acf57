"""The seller's side of the call link (``exchange.nodelink``): a node's listener for its edges."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import msgspec

from .messages import ErrorBody, ErrorDetail, json_encoder
from .nodelink import (LinkEnd, BACKLOG_BYTES, HELLO_MAX, HELLO_TIMEOUT_S, IN_FLIGHT_PAUSE, JSON_TYPE, MAX_FRAME, OK, Answer, Request, frame, hello, to_seller)

if TYPE_CHECKING:
    from .service import Exchange

log = logging.getLogger("exchange.nodelink")
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


class _SellerProtocol(LinkEnd):
    def __init__(self, server: LinkServer) -> None:
        super().__init__(HELLO_MAX)
        self.server = server
        self.node = ""  # the edge's id, from its first frame
        self.closed = asyncio.get_running_loop().create_future()
        self.running = 0
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server.conns.add(self)
        asyncio.get_running_loop().call_later(HELLO_TIMEOUT_S, self._hello_due)

    def _hello_due(self) -> None:
        if not self.node:  # silent, or still sending its first frame: a client of nobody's
            self.close()

    def on_frame(self, payload: bytes) -> bool:
        if not self.node:
            try:
                secret, node = hello(payload)
            except msgspec.DecodeError:
                secret, node = "", ""
            if not node or not self.server.secret_ok(secret):
                log.warning("node_link_refused", extra={"peer": str(self.transport.get_extra_info("peername") if self.transport else "")})
                self.close()
                return False
            self.node = node
            old = self.server.edges.get(node)
            self.server.edges[node] = self
            if old is not None:
                old.close()
            self.frames.limit = MAX_FRAME
            self.transport.write(frame(OK))  # type: ignore[union-attr]
            return True
        requests, answers = to_seller(payload)
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
        return True

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
            answer = (rid, 500, [JSON_TYPE], json_encoder.encode(ErrorBody(error=ErrorDetail(
                code="internal_error", message="the exchange failed to handle this request"))))
        finally:
            self.running -= 1
            if self.paused and self.running < IN_FLIGHT_PAUSE // 2 and self.transport is not None:
                self.paused = False
                self.transport.resume_reading()
        self.items.append(answer)
        self.later()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)
        if self.node and self.server.edges.get(self.node) is self:
            del self.server.edges[self.node]
        if not self.closed.done():
            self.closed.set_result(None)
