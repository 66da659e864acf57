"""``/openapi.json``, generated from the same msgspec Structs that validate the wire."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from . import messages as m
from .privacy_wire import ErasureRequest, LegalHoldRequest

_BODIES = [m.AccountCreate, m.AccountCreated, m.Deposit, m.Balance, m.CallRequest, m.DecisionResponse,
           m.CallEvent, m.EventResponse, m.Suppression, m.RefundRequest, m.RefundResponse, m.ErrorBody,
           m.ConsentCreate, m.ConsentRevoke, m.Campaign, ErasureRequest, LegalHoldRequest]
_SCHEMAS, _COMPONENTS = msgspec.json.schema_components(_BODIES, ref_template="#/components/schemas/{name}")
_REF: dict[type, dict[str, Any]] = {t: s for t, s in zip(_BODIES, _SCHEMAS)}
_ERR = {"description": "error", "content": {"application/json": {"schema": _REF[m.ErrorBody]}}}


def _op(summary: str, req: type | None, resp: type | None, status: str = "200", params: tuple[str, ...] = (),
        headers: tuple[str, ...] = (), security: bool = True, query: tuple[str, ...] = ()) -> dict:
    op: dict = {"summary": summary, "responses": {status: (ok := {"description": "ok"}), **({"200": ok} if status == "201" else {}), "4XX": _ERR}}  # 201 created, 200 a replay
    if resp is not None:
        op["responses"][status]["content"] = {"application/json": {"schema": _REF[resp]}}
    if req is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _REF[req]}}}
    op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params] + [
        {"name": h, "in": "header", "required": h == "Idempotency-Key", "schema": {"type": "string", "maxLength": 128}} for h in headers
    ] + [{"name": q, "in": "query", "required": False, "schema": _QUERY.get(q, {"type": "string"})} for q in query]
    if not security:
        op["security"] = []
    return op


_TIME = {"type": "string", "format": "date-time", "description": "RFC 3339 with a zone, like 2026-11-23T14:05:00Z"}
_QUERY: dict[str, dict[str, Any]] = {
    "from": _TIME, "to": _TIME,
    "status": {"type": "string", "enum": ["routed", "connected", "completed", "failed", "expired", "rejected"]},
    "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
    "cursor": {"type": "string", "description": "next_cursor of the previous page"},
    "interval_ms": {"type": "integer", "minimum": 200, "maximum": 60000, "default": 1000},
    "group_by": {"type": "string", "enum": ["buyer", "publisher", "campaign", "vertical", "state", "hour", "reason"], "default": "hour"},
}
_UPLOAD = {"required": True, "content": {"text/plain": {"schema": {"type": "string", "description": "the list file (FTC format: one 10-digit number a line)"}}}}


def _ws(summary: str) -> dict:
    return {"summary": summary + " (WebSocket: send Upgrade; subprotocol dce.json.v1 or dce.msgpack.v1)",
            "responses": {"101": {"description": "switching protocols"}, "4XX": _ERR}}


def document() -> dict:
    acc = ("account_id",)
    call = ("call_id",)
    paths = {
        "/v1/accounts": {"post": _op("Create a buyer or publisher account (operator); the key is shown once", m.AccountCreate, m.AccountCreated, "201")},
        "/v1/accounts/{account_id}/deposits": {"post": _op("Deposit funds to a buyer (operator)", m.Deposit, m.Balance, "201", acc)},
        "/v1/accounts/{account_id}/payouts": {"post": _op("Record a payout to a publisher, at most what it is owed (operator)", m.Deposit, m.Balance, "201", acc)},
        "/v1/accounts/{account_id}/balance": {"get": _op("Balance, holds and available funds", None, m.Balance, params=acc)},
        "/v1/accounts/{account_id}/statement": {"get": _op("Ledger lines (JSON, or CSV with Accept: text/csv); from= and to= (RFC 3339) bound them", None, None, params=acc)},
        "/v1/calls": {"post": _op("Submit a call: gate, auction and routing plan", m.CallRequest, m.DecisionResponse, headers=("Idempotency-Key-Optional",)),
                      "get": _op("The caller's own calls, newest first, in cursor pages (JSON, or CSV with Accept: text/csv)", None, None,
                                 query=("from", "to", "status", "limit", "cursor"))},
        "/v1/calls/{call_id}": {"get": _op("The call, its decision, events and money (a buyer: its own legs only)", None, None, params=call)},
        "/v1/calls/{call_id}/auction": {"get": _op("The auction replay: every candidate, its outcome (won, fallback, outbid, below_floor, timeout, "
                                                   "no_bid, ineligible with a reason), ineligible_counts, the clearing price (operator: all; a buyer: "
                                                   "its own candidates; publishers: 403)", None, None, params=call)},
        "/v1/reports": {"get": _op("Calls, fill, wins, money and durations grouped by one field, scoped to the caller (JSON or CSV)", None, None,
                                   query=("from", "to", "group_by"))},
        "/v1/events": {"get": _op("The caller's own domain events in their total order (the operator: all), from any position; "
                                  "query: after=<event id or cursor>, limit=1..1000, types=a,b", None, None)},
        "/v1/webhooks": {"post": _op("Register a signed webhook for the caller's events; body {url, types?}; the secret is shown once",
                                     None, None, "201"),
                         "get": _op("The caller's webhooks", None, None)},
        "/v1/webhooks/{webhook_id}": {"delete": _op("Remove one of the caller's webhooks", None, None, params=("webhook_id",))},
        "/v1/webhooks/{webhook_id}/deliveries": {"get": _op("A webhook's delivery log, newest first", None, None, params=("webhook_id",))},
        "/v1/campaigns": {"post": _op("Create or replace one of the caller's campaigns (a buyer), as the campaign message of "
                                      "/v1/buyers/ws; a campaign with a ping prices calls over HTTP (no socket needed)", m.Campaign, None)},
        "/v1/pings": {"get": _op("HTTP bidders: the caller's campaigns with a ping and their counts (pings, bids, no_bids by reason, "
                                 "answer times); the operator: every one", None, None)},
        "/v1/dnc/national": {"post": _op("Import the national Do-Not-Call list (operator); query: snapshot_date=YYYY-MM-DD (required), "
                                         "kind=full|changes, force=true", None, None, "201")},
        "/v1/dnc/state/{state}": {"post": _op("Import a state's Do-Not-Call list (operator); query: snapshot_date=YYYY-MM-DD (required), force=true",
                                              None, None, "201", ("state",))},
        "/v1/consents": {"post": _op("Record a consumer's consent (operator, publisher)", m.ConsentCreate, None, "201")},
        "/v1/consents/{token}/revoke": {"post": _op("Revoke a consent (operator: everywhere; buyer: for itself); the body is optional", m.ConsentRevoke, None, params=("token",))},
        "/openapi.json": {"get": _op("This document", None, None, security=False)},
        "/": {"get": _op("Redirects to /dashboard (307)", None, None, "307", security=False)},
        "/dashboard": {"get": _op("The live dashboard: an HTML page that asks for a key and keeps it in the tab (sessionStorage)", None, None, security=False)},
        "/v1/dashboard/stream": {"get": _op("The dashboard's live snapshots as server-sent events (text/event-stream), one a second or "
                                            "every interval_ms (200..60000); scoped to the caller", None, None, query=("interval_ms",))},
        "/v1/calls/{call_id}/events": {"post": _op("connected / completed / failed", m.CallEvent, m.EventResponse, params=call, headers=("Idempotency-Key",))},
        "/v1/calls/{call_id}/refund": {"post": _op("Refund part or the rest of a call's charge (operator); a reversing entry", m.RefundRequest, m.RefundResponse, "201", call, headers=("Idempotency-Key-Optional",))},
        "/v1/audit": {"get": _op("Audit records by call_id, number and from/to (operator), oldest first; after_seq and limit page", None, None)},
        "/v1/suppressions": {"post": _op("Add a permanent opt-out (operator: exchange scope; buyer: its own)", m.Suppression, None, "201")},
        "/v1/privacy/erasures": {"post": _op("Erase a consumer's number (operator): its data keys are destroyed, every stored "
                                             "trace unreadable; 409 legal_hold", ErasureRequest, None)},
        "/v1/privacy/holds": {"post": _op("Put a number under a legal hold (operator): retention and erasure spare it; "
                                          "a hold already there: 200", LegalHoldRequest, None, "201"),
                              "get": _op("The legal holds, by number hash (operator)", None, None)},
        "/v1/privacy/holds/{number_hash}": {"delete": _op("Release a legal hold (operator)", None, None, params=("number_hash",))},
        "/v1/privacy/key-rotations": {"post": _op("Re-read the master key file and re-wrap every key under its first key (operator)",
                                                  None, None)},
        "/healthz": {"get": _op("Liveness", None, None, security=False)},
        "/readyz": {"get": _op("Readiness", None, None, security=False)},
        "/metrics": {"get": _op("Prometheus metrics", None, None, security=False)},
    }
    for path in ("/v1/dnc/national", "/v1/dnc/state/{state}"):
        paths[path]["post"]["requestBody"] = _UPLOAD
    paths["/v1/consents/{token}/revoke"]["post"]["requestBody"]["required"] = False
    # the optional idempotency header of POST /v1/calls is named plainly in the document
    for path in ("/v1/calls", "/v1/calls/{call_id}/refund"):
        for p in paths[path]["post"]["parameters"]:
            if p["name"] == "Idempotency-Key-Optional":
                p["name"] = "Idempotency-Key"
    return {
        "openapi": "3.1.0",
        "info": {"title": "Pay-per-call exchange", "version": "1"},
        "servers": [{"url": "/"}],
        "components": {"schemas": _COMPONENTS, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
        "x-websockets": {  # not HTTP operations: the sockets, named here so the document lists every route
            "/v1/buyers/ws": _ws("Buyers: campaigns, the bid stream and live answers; wins, losses and call notices"),
            "/v1/publishers/ws": _ws("Publishers: calls over a socket, answered by decisions"),
        },
    }


_DOC = msgspec.json.encode(document())


async def openapi(request: Request) -> Response:
    return Response(_DOC, media_type="application/json")
