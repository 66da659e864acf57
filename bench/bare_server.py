"""The bare transport: the floor that the real buyer gateway is measured against.

A minimal Starlette app on uvicorn, with the same uvicorn transport settings as the exchange,
whose buyer WebSocket endpoint only decodes each frame with
``exchange.codec.decode_buyer_frame`` (nothing is applied) and answers a ``ping`` with a
``pong`` carrying its ``seq`` (and any other message carrying a ``seq`` with an ``ack``, so the
load test's buyers can set up against it: ``loadtest.ceiling``). A frame that does not decode gets the ``error`` messages the
decoder produced (free on the happy path) so a load generator can prove its frames are valid.

The ``pong`` carries one extra optional field, ``messages``: how many messages this connection
has decoded so far (the ping included). The unit test uses it to check that every frame the
load generator counted was decoded.

    python -m bench.bare_server --host 127.0.0.1 --port 8765
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from exchange.codec import decode_buyer_frame
from exchange.messages import Ack, Ping, json_encoder

if TYPE_CHECKING:
    import uvicorn

SUBPROTOCOLS = ("dce.json.v1", "dce.msgpack.v1")

# Fallback only: the bare server takes the exchange's own uvicorn config
# (``exchange.server.uvicorn_config``) so the transport is configured exactly alike.
UVICORN_KW: dict[str, object] = {
    "loop": "uvloop",
    "http": "httptools",
    "ws": "websockets-sansio",
    "ws_max_size": 1 << 20,
    "ws_ping_interval": 20.0,
    "ws_ping_timeout": 20.0,
    "lifespan": "on",
    "access_log": False,
    "log_level": "warning",
}


class CountedPong(msgspec.Struct, tag_field="type", tag="pong", omit_defaults=True):
    seq: int | None = None
    messages: int = 0


async def buyers_ws(websocket: WebSocket) -> None:
    offered = websocket.scope.get("subprotocols") or []
    proto = next((p for p in offered if p in SUBPROTOCOLS), None)
    await websocket.accept(subprotocol=proto)
    binary = proto == "dce.msgpack.v1"
    receive = websocket.receive
    decoded = 0
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            return
        data = event.get("text")
        if data is None:
            data = event.get("bytes") or b""
        decoded_frame = decode_buyer_frame(data, binary)  # (messages, errors[, paths])
        good = decoded_frame[0]
        errors = decoded_frame[1]
        decoded += len(good)
        if errors:
            for err in errors:
                await websocket.send_text(json_encoder.encode(err).decode())
        for msg in good:
            if type(msg) is Ping:
                await websocket.send_text(json_encoder.encode(CountedPong(seq=msg.seq, messages=decoded)).decode())
            elif getattr(msg, "seq", None) is not None:  # a load generator waits for its campaigns' acks
                await websocket.send_text(json_encoder.encode(Ack(seq=msg.seq)).decode())


async def readyz(request: Request) -> Response:
    return Response(b'{"status":"ready"}', media_type="application/json")


def make_app() -> Starlette:
    return Starlette(routes=[Route("/readyz", readyz), WebSocketRoute("/v1/buyers/ws", buyers_ws)])


def uvicorn_config(app: object, host: str, port: int) -> uvicorn.Config:
    """The exchange's uvicorn config for ``app`` (same loop, parser, WebSocket implementation,
    frame limit, pings, lifespan), or the equivalent fallback if the exchange cannot be imported."""
    import uvicorn

    try:
        from exchange.server import uvicorn_config as exchange_uvicorn_config
        from exchange.settings import load
    except ImportError:
        return uvicorn.Config(app, host=host, port=port, **UVICORN_KW)  # type: ignore[arg-type]
    return exchange_uvicorn_config(app, load(host=host, port=port))


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Run the bare transport in this process (blocks until interrupted)."""
    import uvicorn

    uvicorn.Server(uvicorn_config(make_app(), host, port)).run()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args(argv)
    serve(args.port, args.host)


if __name__ == "__main__":
    main()
