"""A publisher's WebSocket at an edge, relayed to the market's seller (``exchange.nodes``).

An edge decides no call, so a publisher socket it accepts (authenticated here, as any socket)
is joined to one at the seller, opened with the publisher's own key and the same subprotocol;
frames go through both ways unchanged, and the seller answers them as it answers a publisher
connected to it (its per-key limits, validation and idempotency apply). Either side closing
closes the other; when the seller cannot be reached the publisher gets an ``error``
(``seller_unreachable``) and the close code 1013 (try again later), as HTTP gets a 503.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from .forward import seller_url
from .messages import Error

if TYPE_CHECKING:
    from .connections import Connection
    from .service import Exchange

log = logging.getLogger("exchange.wsrelay")


async def relay_publisher(exchange: Exchange, ws: WebSocket, conn: Connection, subprotocol: str | None) -> None:
    base = seller_url(exchange, "ws")
    headers = {"Authorization": ws.headers.get("authorization", "")}
    if ws.client is not None:
        headers["X-Forwarded-For"] = ws.client.host
    try:
        if base is None:
            raise OSError("no seller is known for this market now")
        up = await connect(base + "/v1/publishers/ws", additional_headers=headers, subprotocols=[subprotocol] if subprotocol else None,  # type: ignore[list-item]
                           open_timeout=2, max_size=exchange.settings.max_frame_bytes, compression=None)
    except (TimeoutError, OSError, WebSocketException) as exc:
        log.warning("publisher_relay_failed", extra={"error": str(exc)})
        conn.send(Error(code="seller_unreachable", message="this edge cannot reach its market's seller now: reconnect and retry"))
        await conn.drain()
        await ws.close(1013, "seller unreachable: retry")
        return

    async def down() -> None:  # publisher -> seller
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes") if msg.get("bytes") is not None else msg.get("text")
            if data is not None:
                await up.send(data)

    async def back() -> None:  # seller -> publisher
        async for data in up:
            if isinstance(data, bytes):
                await ws.send_bytes(data)
            else:
                await ws.send_text(data)

    tasks = [asyncio.create_task(down()), asyncio.create_task(back())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await up.close()
        try:
            await ws.close(1000 if up.close_code in (None, 1000) else 1013)
        except (RuntimeError, WebSocketDisconnect, ConnectionClosed):
            pass
