"""Runs the app on uvicorn: uvloop, httptools and the websockets sans-I/O implementation.

Heartbeats and idle timeouts. uvicorn (0.44 and later) sends keepalive pings on
``websockets-sansio`` every ``ws_ping_interval``; its ``ws_ping_timeout`` would close a
socket whose pong is late with 1011, and pongs never reach the ASGI app, so the app cannot
see them. The idle rule is therefore kept one level down, in ``IdleTimeoutProtocol``: any
bytes in (a frame, a pong, a close) mark the socket alive; one timer per socket closes it
with 1001 and a reason once nothing has arrived for ``idle_timeout_s`` (it looks four times
per timeout, so the close comes 1 to 1.25 timeouts after the last byte). uvicorn pings
every ``heartbeat_s`` (at most half the idle timeout, so a live peer always answers in
time) and its own pong timeout is off.

Shutdown. uvicorn's ``Server.shutdown`` closes every WebSocket at once with 1012 *before*
the lifespan shutdown runs; ``ExchangeServer`` first marks the exchange not ready and runs
``connections.close_all`` (calls in flight decided, queues flushed, 1001), then uvicorn's own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from .app import build_app
from .connections import close_all
from .access import AUTHENTICATED
from .metrics import Metrics
from .nodes import ADOPT_ENV, preflight
from .service import Exchange
from .settings import Settings

log = logging.getLogger("exchange.server")


_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonLines(logging.Formatter):
    """One JSON object per line: ``level``, ``logger``, ``event`` (the message) and the record's
    structured fields (``log.info("event_name", extra={...})``), encoded by the JSON library."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {"level": record.levelname.lower(), "logger": record.name, "event": record.getMessage()}
        for k, v in vars(record).items():
            if k not in _RECORD_FIELDS:
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger("exchange")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


_sansio_data_received = WebSocketsSansIOProtocol.data_received
IDLE_TICKS = 4  # idle checks per idle timeout: a silent socket is closed within 1.25 x idle_timeout_s
LINGER_S = 2.0  # after closing for a bad frame, how long the rest of the peer's bytes are read and dropped
# Urgent frames: an RTB answer alone in its frame, as the protocol's examples and msgspec write
# it. It answers a bid request whose round closes at tmax_ms, so it is applied as it is read
# instead of after the bid frames the buyer sent before it that are still queued for the app. Out of order is safe: an answer names its request and
# carries its own price; nothing else in the frame stream depends on it.
URGENT_PREFIXES = (b'{"type":"rtb_bid"', b'{"type":"no_bid"')
URGENT_MAX_BYTES = 2048


class IdleTimeoutProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets sans-I/O protocol, closing a socket silent for ``idle_timeout_s``
    with 1001. Arriving bytes only set a flag (this is the ingest path: no clock read, no timer
    re-armed per read); one timer per socket looks at it ``IDLE_TICKS`` times per timeout."""

    idle_timeout_s: float = 120.0
    metrics: Metrics | None = None  # the exchange's, counting idle closes (none in the bare bench server)
    idle_timer: asyncio.TimerHandle | None = None
    rx = False
    silent_ticks = 0
    lingering = False  # closed for a bad frame: reading and dropping what the peer still sends
    urgent: Callable[[str], object] | None = None  # applies an urgent frame now (set by the app: ``scope["extensions"]``)

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # the app hands its frame handler for urgent frames here (exchange.gateway)
            scope["extensions"]["exchange.urgent"] = self._take_urgent

    def _take_urgent(self, handler: Callable[[str], object] | None) -> None:
        self.urgent = handler

    def send_receive_event_to_app(self) -> None:
        """uvicorn's, except that an urgent frame is applied at once instead of queued: the frames
        one read brought in are parsed together, so an answer behind bid frames in the same read
        goes before them. (Reading on past queued frames, so that an answer could overtake more
        than one read, was tried with 256 KiB of read-ahead and made the load test at 100,000
        campaigns worse: 431 late answers against 64, the readers' turns grew with their queues.)"""
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return  # the app is past websocket.close: dropped, reads stay active for the peer's close
        if self.curr_msg_data_type == "text":
            try:
                text = data.decode()
            except UnicodeDecodeError:
                self.logger.exception("Invalid UTF-8 sequence received from client.")
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
            urgent = self.urgent
            if urgent is not None and len(data) <= URGENT_MAX_BYTES and data.startswith(URGENT_PREFIXES):
                try:
                    urgent(text)
                except Exception:  # as the app's reader: a broken handler is logged and the socket closed
                    log.exception("socket_failed", extra={"role": "buyer", "urgent": True})
                    self.transport.close()
                return
            self.queue.put_nowait({"type": "websocket.receive", "text": text})
        else:
            self.queue.put_nowait({"type": "websocket.receive", "bytes": data})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()


    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.idle_timer = self.loop.call_later(self.idle_timeout_s / IDLE_TICKS, self._check_idle)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # the rest of a frame we refused: read (so closing sends no reset) and dropped
        self.rx = True
        _sansio_data_received(self, data)

    def handle_parser_exception(self) -> None:
        """A frame the parser refused (too big: 1009; malformed: 1002). uvicorn writes the close
        frame and closes the socket at once, but the peer is often still sending the rest of
        that frame (a megabyte frame takes a while): closing with unread bytes makes the kernel
        send a reset, and the peer sees "connection reset" instead of the close code. So: write
        the close frame, end our side (FIN), and read and drop the peer's bytes until it closes
        or ``LINGER_S`` passes."""
        assert self.conn.close_sent is not None
        self.queue.put_nowait({"type": "websocket.disconnect", "code": self.conn.close_sent.code, "reason": self.conn.close_sent.reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.lingering = True
        try:
            self.transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            self.transport.close()
            return
        # (as uvicorn's close timer: the app's end does not close the transport while it is set)
        self.close_timer = self.loop.call_later(LINGER_S, self.transport.close)

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio's protocol: True keeps the half-closed transport
        if self.lingering:
            self.transport.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        super().connection_lost(exc)

    async def send(self, message: Any) -> None:
        """uvicorn's ``send``, except that a close never waits for the peer to read: a slow
        consumer is closed *because* it reads nothing, and uvicorn would hold the close until
        its write buffer drains. The close frame goes out behind what is buffered, and a peer
        that has not finished the closing handshake within ``close_timeout`` is cut off
        (``abort``: a plain ``close`` would wait for the unread buffer too)."""
        closing = message["type"] == "websocket.close" and self.handshake_complete
        if closing and not self.writable.is_set():
            self.writable.set()  # the last message: no other send waits on this connection
        await super().send(message)
        if closing and self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)

    def _check_idle(self) -> None:
        self.idle_timer = None
        if self.disconnected or self.close_sent or self.transport.is_closing():
            return
        if self.rx or self.read_paused:  # bytes arrived, or the app has not taken the last frame yet
            self.rx, self.silent_ticks = False, 0
        else:
            self.silent_ticks += 1
            if self.silent_ticks >= IDLE_TICKS:
                self._close_idle()
                return
        self.idle_timer = self.loop.call_later(self.idle_timeout_s / IDLE_TICKS, self._check_idle)

    def _close_idle(self) -> None:
        log.info("ws_idle_closed", extra={"idle_s": self.idle_timeout_s})
        if self.metrics is not None:
            self.metrics.ws_idle_closed += 1
        if self.handshake_complete:
            self.stop_keepalive()
            self.conn.fail(1001, f"idle timeout: nothing received for {self.idle_timeout_s:g} s")
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
        self.transport.close()  # connection_lost tells the app (websocket.disconnect)


def _closing_response(status: bytes, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


REQUEST_TIMEOUT = _closing_response(b"408 Request Timeout", "request_timeout", "the request was not received in time")
TOO_MANY_CONNECTIONS = _closing_response(b"429 Too Many Requests", "too_many_connections",
                                         "too many connections from this address have not presented a valid key")


class ReadDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with read deadlines: a request's headers must arrive within
    ``header_timeout_s`` of its first byte (of the connection, for a new one), and its body within
    ``body_timeout_s`` of its headers. uvicorn has neither, so a client sending a byte a second
    held its connection open indefinitely. A request past its deadline gets ``408`` (when no
    response has started) and the connection is closed. Between requests uvicorn's keep-alive
    timeout applies; a WebSocket upgrade hands the socket to ``IdleTimeoutProtocol``."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    deadline: asyncio.TimerHandle | None = None
    # Connections per client address that have not presented a valid key yet (a slow-loris or a
    # key-guessing flood from one address cannot hold every descriptor). Each subclass made by
    # ``http_protocol`` has its own table; 0 means no limit.
    unauth_limit: int = 0
    unauth: dict[str, int] = {}
    metrics: Metrics | None = None
    pending_from: str | None = None  # this connection's address while it counts in ``unauth``

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.unauth_limit and self.client:
            host = self.client[0]
            held = self.unauth.get(host, 0)
            if held >= self.unauth_limit:
                if self.metrics is not None:
                    self.metrics.http_unauth_refused += 1
                transport.write(TOO_MANY_CONNECTIONS)
                transport.close()
                return
            self.unauth[host] = held + 1
            self.pending_from = host
        self._arm(self.header_timeout_s)

    def authenticated(self) -> None:
        """The connection presented a valid key: it no longer counts against its address."""
        host = self.pending_from
        if host is not None:
            self.pending_from = None
            left = self.unauth.get(host, 1) - 1
            if left > 0:
                self.unauth[host] = left
            else:
                self.unauth.pop(host, None)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.deadline is None:  # the next request on a kept-alive connection
            self._arm(self.header_timeout_s)

    def on_headers_complete(self) -> None:
        self._arm(self.body_timeout_s)
        if self.pending_from is not None:
            self.scope[AUTHENTICATED] = self.authenticated  # type: ignore[literal-required]  # our key in the ASGI scope
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        # the socket leaves this protocol (its handshake is judged by the app, a bad key refused
        # and closed, and a silent socket closed by the idle timeout)
        self.authenticated()
        self._disarm()
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self.authenticated()
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _expired(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        log.info("http_read_timeout", extra={"client": self.client[0] if self.client else None,
                                             "stage": "body" if cycle is not None and not cycle.response_complete else "headers"})
        if cycle is None or not (cycle.response_started or cycle.response_complete):
            self.transport.write(REQUEST_TIMEOUT)
        if cycle is not None:
            cycle.keep_alive = False
        self.transport.close()


def http_protocol(settings: Settings, metrics: Metrics | None = None) -> type[ReadDeadlineProtocol]:
    """The HTTP protocol class for these settings (uvicorn instantiates it per connection)."""
    return type("ReadDeadlineProtocol", (ReadDeadlineProtocol,), {"header_timeout_s": float(settings.http_header_timeout_s),
                                                                  "body_timeout_s": float(settings.http_body_timeout_s),
                                                                  "unauth_limit": settings.http_unauth_per_address,
                                                                  "unauth": {}, "metrics": metrics})


def ws_protocol(settings: Settings, metrics: Metrics | None = None) -> type[IdleTimeoutProtocol]:
    """The protocol class for these settings (uvicorn instantiates it per socket)."""
    return type("IdleTimeoutProtocol", (IdleTimeoutProtocol,), {"idle_timeout_s": float(settings.idle_timeout_s), "metrics": metrics})


def ping_interval_s(settings: Settings) -> float:
    return float(min(settings.heartbeat_s, settings.idle_timeout_s / 2))


def uvicorn_config(app: Any, settings: Settings, **extra: Any) -> uvicorn.Config:
    exchange = getattr(getattr(app, "state", None), "exchange", None)
    metrics = exchange.metrics if isinstance(exchange, Exchange) else None
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=http_protocol(settings, metrics),
        ws=ws_protocol(settings, metrics),
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=settings.ws_compression,
        ws_ping_interval=ping_interval_s(settings),
        ws_ping_timeout=None,  # the idle timeout above decides (1001), not a late pong (1011)
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=10,
        # longer than a client pool keeps an idle connection (uvicorn's 5 s closed them while a
        # publisher sent its next event on them: a reset the client cannot tell from a crash)
        timeout_keep_alive=settings.http_keepalive_s,
        **extra,
    )


def serve(settings: Settings) -> int:
    configure_logging(settings.log_level)
    refused = asyncio.run(preflight(settings))
    if refused is not None:
        print(f"refusing to start: {refused}", file=sys.stderr, flush=True)
        return 2
    exchange = Exchange(settings)
    if settings.admin_key is None:
        print(f"operator key (set EXCHANGE_ADMIN_KEY to choose one): {exchange.admin_key}", flush=True)
    app = build_app(settings, exchange)
    print(f"exchange listening on http://{settings.host}:{settings.port}", flush=True)
    server = ExchangeServer(uvicorn_config(app, settings), exchange)
    exchange.on_handover = lambda: setattr(server, "should_exit", True)
    server.run()
    if exchange.handover is not None:  # an edge took the vacant seller's lease: this process becomes the seller
        print("the seller's lease changed hands: restarting this node to join its market again "
              f"({'as the seller' if exchange.node is not None and exchange.node.taking_over else 'as an edge'})", flush=True)
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, ADOPT_ENV: exchange.handover})
    return 0 if server.started else 3  # 3: the start failed (logged), e.g. a node refused while joining


class ExchangeServer(uvicorn.Server):
    """uvicorn's server with the exchange's WebSockets drained before uvicorn shuts down."""

    def __init__(self, config: uvicorn.Config, exchange: Exchange) -> None:
        super().__init__(config)
        self.exchange = exchange

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.exchange.ready = False  # /readyz says draining; new sockets get 1013
        try:
            await close_all(self.exchange)
        except Exception:  # the drain must not stop the rest of the shutdown
            log.exception("close_all_failed")
        await super().shutdown(sockets)
