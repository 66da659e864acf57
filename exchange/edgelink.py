"""The edge's side of the call link (``exchange.nodelink``): one connection to the seller, kept open."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING


from .nodelink import (LinkEnd, ANSWER_TIMEOUT_S, BODY_MAX, MAX_FRAME, OK, OPEN_TIMEOUT_S, RETRY_AFTER_FAILED_S, Headers, encode, frame, to_edge, unreachable)

if TYPE_CHECKING:
    from .service import Exchange

log = logging.getLogger("exchange.nodelink")


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
            hello = encode((node.link_secret, node.id)) if node is not None else b""
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


class _EdgeProtocol(LinkEnd):
    def __init__(self, on_notice: Callable[[str, bytes], None]) -> None:
        super().__init__(MAX_FRAME)
        self.on_notice = on_notice
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.open = False
        self.pending: dict[int, asyncio.Future[tuple[int, Headers, bytes]]] = {}
        self.next_id = 0

    def writable(self) -> bool:
        return self.open and super().writable()

    async def request(self, method: str, path: str, query: bytes, headers: Headers, body: bytes,
                      host: str) -> tuple[int, Headers, bytes]:
        if not self.open:
            raise unreachable()
        rid = self.next_id = self.next_id + 1
        fut: asyncio.Future[tuple[int, Headers, bytes]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        self.items.append((rid, method, path, query, headers, body, host))
        self.later()
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                return await fut
        except TimeoutError:
            raise unreachable() from None
        finally:
            self.pending.pop(rid, None)

    def on_frame(self, payload: bytes) -> bool:
        if not self.open:
            if payload != OK:
                self.close()
                return False
            self.open = True
            if not self.ready.done():
                self.ready.set_result(None)
            return True
        answers, notices = to_edge(payload)
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
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """Gone: every request sent and not answered gets a 503."""
        was = self.open
        self.open = False
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("the seller closed the link (not the seller, or another market's secret)"))
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(unreachable())
        if was:
            log.warning("node_link_lost", extra={"error": str(exc) if exc else "closed"})
