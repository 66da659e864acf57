"""``/v1/webhooks``: a tenant's endpoints for its domain events (exchange.webhook_registry; delivered by exchange.webhooks).

- ``POST /v1/webhooks`` ``{"url", "events"?: [type...] (empty: all), "secret"?: 16..256
  characters}`` → ``201 {"id", "secret", "url", "events"}``; the secret is shown here only.
  A URL that is not http(s), points at the exchange, or resolves to an address the exchange
  will not call (exchange.ssrf) is ``422 invalid_url`` with the path ``$.url``.
- ``GET /v1/webhooks`` → ``{"webhooks": [...]}`` (the caller's; the operator's own);
  ``DELETE /v1/webhooks/{id}`` → ``204``; ``GET /v1/webhooks/{id}/deliveries?limit=`` → the
  delivery log, newest first. Another tenant's webhook is ``404``.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from billing.events import TYPES

from .errors import Invalid, NotFound, Unavailable
from .access import auth
from .http import _exchange, body, reply
from .instants import rfc3339
from .ssrf import UrlRefused
from .webhook_registry import WebhookRegistry
from .webhook_parts import Hook


class WebhookCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: Annotated[str, Meta(min_length=1, max_length=2048)]
    events: Annotated[list[str], Meta(max_length=len(TYPES))] = []
    secret: Annotated[str, Meta(min_length=16, max_length=256)] | None = None


def _hooks(request: Request) -> WebhookRegistry:
    hooks = _exchange(request).webhooks
    if hooks is None:
        raise Unavailable("webhooks_unavailable", "webhooks are not running", retry_after_s=1)
    return hooks


async def post_webhook(request: Request) -> Response:
    caller = auth(request, "operator", "buyer", "publisher")
    req: WebhookCreate = await body(request, WebhookCreate)
    for i, t in enumerate(req.events):
        if t not in TYPES:
            raise Invalid("invalid_event_type", f"unknown event type {t!r}; known: {', '.join(TYPES)}", f"$.events[{i}]")
    ex = _exchange(request)
    try:
        with ex.journal.reading():
            hook, secret = await _hooks(request).create(caller.id, req.url, req.events, req.secret)
    except UrlRefused as exc:
        raise Invalid("invalid_url", str(exc), "$.url") from None
    return reply({"id": hook.id, "secret": secret, "url": hook.url, "events": sorted(hook.events or ())}, 201)


async def _owned(request: Request) -> Hook:
    caller = auth(request, "operator", "buyer", "publisher")
    with _exchange(request).journal.reading():
        hook = await _hooks(request).owned(caller.id, request.path_params["webhook_id"])
    if hook is None:
        raise NotFound("unknown_webhook", f"no webhook {request.path_params['webhook_id']!r}")
    return hook


async def get_webhooks(request: Request) -> Response:
    caller = auth(request, "operator", "buyer", "publisher")
    with _exchange(request).journal.reading():
        hooks = await _hooks(request).listed(caller.id)
    return reply({"webhooks": [h.view() for h in hooks]})


async def delete_webhook(request: Request) -> Response:
    hook = await _owned(request)
    with _exchange(request).journal.reading():
        await _hooks(request).delete(hook)
    return Response(status_code=204)


async def get_deliveries(request: Request) -> Response:
    hook = await _owned(request)
    try:
        limit = int(request.query_params.get("limit", "100"))
    except ValueError:
        raise Invalid("invalid_query", "limit must be an integer", "$.limit") from None
    if not 1 <= limit <= 1000:
        raise Invalid("invalid_query", "limit must be between 1 and 1000", "$.limit")
    with _exchange(request).journal.reading():
        rows = await _hooks(request).deliveries(hook, limit)
    return reply({"webhook_id": hook.id, "deliveries": [
        {"event_id": e, "attempt": int(a), "at": rfc3339(int(at)), "ok": bool(ok), "http_status": s, "error": err,
         "duration_ms": int(ms), "next_attempt_at": rfc3339(int(nxt)) if nxt is not None else None}
        for e, a, at, ok, s, err, ms, nxt in rows]})
