"""The call path over HTTP: ``POST /v1/calls`` and ``POST /v1/calls/{id}/events`` served
straight from the ASGI scope.

These two requests are most of a publisher's traffic, and the framework's layers (router,
middleware, ``Request`` and ``Response`` objects) cost more server CPU than the decision
itself. ``CallPath`` wraps the Starlette app: it answers those two routes with the same
checks, in the same order, with the same bodies and statuses as the handlers in ``http``
(authentication and rate limits, roles, the body limit, decoding with JSON paths,
idempotency keys, the ``Refused`` -> status table), and passes every other request,
WebSocket and lifespan message to the app untouched.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from .codec import decode_body
from .errors import BadRequest, Refused
from .access import admit, check_key, limits_of
from .forward import Forwarder
from .http import read_body, status_of
from .messages import CallEvent, CallRequest, ErrorBody, ErrorDetail, json_encoder
from .service import Exchange
from .urlguard import C0, C0_QUERY

log = logging.getLogger("exchange")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_JSON = (b"content-type", b"application/json")
_PUBLISHER = ("publisher",)
_EVENT_ROLES = ("publisher", "operator")
_READS = ("GET", "HEAD", "OPTIONS")
_OPEN = ("/healthz", "/readyz", "/metrics", "/openapi.json")  # what an edge answers over HTTP


class ClientGone(Exception):
    """The client went away before its body was read: nothing to answer."""


class CallPath:
    __slots__ = ("app", "ex", "limit", "forward")

    def __init__(self, app: Any, ex: Exchange) -> None:
        self.app, self.ex = app, ex
        self.limit = ex.settings.max_body_bytes
        self.forward = Forwarder(ex) if ex.settings.node_id else None  # an edge's HTTP API goes to the seller

    def __getattr__(self, name: str) -> Any:  # the app's routes, state, router ...
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        node = self.ex.node
        if node is not None and scope["type"] == "http" and (scope["method"] not in _READS or not (node.selling or scope["path"] in _OPEN)):
            refused: Refused | None = node.refusal()  # a stale node takes no write; an edge forwards to the seller (exchange.nodes)
            if refused is not None and refused.code == "not_seller" and self.forward is not None:
                try:
                    return await self._reply(send, *await self.forward(scope, receive, send, self.app.state))
                except Refused as exc:
                    refused = exc
            if refused is not None:
                return await self._reply(send, *self._refusal(refused))
        if scope["type"] == "http" and scope["method"] == "POST" and not C0_QUERY.search(scope["query_string"]):
            path: str = scope["path"]  # (a URL with a control character goes to the app, whose UrlGuard refuses it)
            if path == "/v1/calls":
                return await self._serve(scope, receive, send, None)
            if path.startswith("/v1/calls/") and path.endswith("/events"):
                call_id = path[10:-7]
                if call_id and "/" not in call_id and not C0.search(call_id):
                    return await self._serve(scope, receive, send, call_id)
        await self.app(scope, receive, send)

    @staticmethod
    def _refusal(exc: Refused) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        headers = [_JSON]
        body = json_encoder.encode(ErrorBody(error=ErrorDetail(code=exc.code, message=exc.message, path=exc.path)))
        for name, value in (exc.headers or {}).items():
            headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        if exc.retry_after_s is not None:
            headers.append((b"retry-after", str(exc.retry_after_s).encode()))
        return status_of(exc), headers, body

    @staticmethod
    async def _reply(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        headers = [h for h in headers if h[0] != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _serve(self, scope: Scope, receive: Receive, send: Send, call_id: str | None) -> None:
        status, headers = 200, [_JSON]
        try:
            body = await self._answer(scope, receive, call_id)
        except Refused as exc:
            status, headers, body = self._refusal(exc)
        except ClientGone:
            log.info("client_disconnected", extra={"path": scope["path"], "method": "POST"})
            return
        except Exception:
            log.exception("request_failed", extra={"path": scope["path"]})
            status, body = 500, json_encoder.encode(ErrorBody(error=ErrorDetail(code="internal_error", message="the exchange failed to handle this request")))
        await self._reply(send, status, headers, body)

    async def _answer(self, scope: Scope, receive: Receive, call_id: str | None) -> bytes:
        authorization = declared = key = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                declared = value
            elif name == b"idempotency-key":
                key = value.decode("latin-1")
        ex = self.ex
        limits = limits_of(self.app.state, ex)
        client = scope.get("client")
        account = admit(limits, check_key(ex, limits, client[0] if client else "?", authorization, scope),
                        _PUBLISHER if call_id is None else _EVENT_ROLES)
        if call_id is None:
            call: CallRequest = decode_body(await self._body(receive, declared), CallRequest)
            if key is not None and not 1 <= len(key) <= 128:
                raise BadRequest("invalid_idempotency_key", "an Idempotency-Key has 1 to 128 characters")
            return json_encoder.encode(await ex.desk.submit(account, call, key))
        if not key or len(key) > 128:
            raise BadRequest("missing_idempotency_key", "events need an Idempotency-Key header (at most 128 characters)")
        ev: CallEvent = decode_body(await self._body(receive, declared), CallEvent)
        return json_encoder.encode(await ex.desk.event(account, call_id, key, ev))

    async def _body(self, receive: Receive, declared: bytes | None) -> bytes:
        limit = self.limit
        if declared is None or (declared.isdigit() and int(declared) <= limit):
            message = await receive()
            if message["type"] != "http.request":
                raise ClientGone
            body: bytes = message.get("body", b"")
            if not message.get("more_body", False) and len(body) <= limit:
                return body  # the usual case: one message, under the limit
            return await read_body(_chunks(receive, message), None, limit)
        return await read_body(_chunks(receive, None), declared.decode("latin-1"), limit)


async def _chunks(receive: Receive, first: MutableMapping[str, Any] | None) -> AsyncIterator[bytes]:
    """The body's chunks from ASGI ``receive`` (after ``first``, already received)."""
    message = first
    while True:
        if message is None:
            message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return
        message = None
