"""``/openapi.json``, generated from the same msgspec Structs that validate the wire."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from . import messages as m

_BODIES = [m.AccountCreate, m.AccountCreated, m.Deposit, m.Balance, m.CallRequest, m.DecisionResponse,
           m.CallEvent, m.EventResponse, m.Suppression, m.RefundRequest, m.RefundResponse, m.ErrorBody]
_SCHEMAS, _COMPONENTS = msgspec.json.schema_components(_BODIES, ref_template="#/components/schemas/{name}")
_REF: dict[type, dict[str, Any]] = {t: s for t, s in zip(_BODIES, _SCHEMAS)}
_ERR = {"description": "error", "content": {"application/json": {"schema": _REF[m.ErrorBody]}}}


def _op(summary: str, req: type | None, resp: type | None, status: str = "200", params: tuple[str, ...] = (),
        headers: tuple[str, ...] = (), security: bool = True) -> dict:
    op: dict = {"summary": summary, "responses": {status: (ok := {"description": "ok"}), **({"200": ok} if status == "201" else {}), "4XX": _ERR}}  # 201 created, 200 a replay
    if resp is not None:
        op["responses"][status]["content"] = {"application/json": {"schema": _REF[resp]}}
    if req is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _REF[req]}}}
    op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params] + [
        {"name": h, "in": "header", "required": h == "Idempotency-Key", "schema": {"type": "string", "maxLength": 128}} for h in headers
    ]
    if not security:
        op["security"] = []
    return op


def document() -> dict:
    acc = ("account_id",)
    call = ("call_id",)
    paths = {
        "/v1/accounts": {"post": _op("Create a buyer or publisher account (operator); the key is shown once", m.AccountCreate, m.AccountCreated, "201")},
        "/v1/accounts/{account_id}/deposits": {"post": _op("Deposit funds to a buyer (operator)", m.Deposit, m.Balance, "201", acc)},
        "/v1/accounts/{account_id}/payouts": {"post": _op("Record a payout to a publisher, at most what it is owed (operator)", m.Deposit, m.Balance, "201", acc)},
        "/v1/accounts/{account_id}/balance": {"get": _op("Balance, holds and available funds", None, m.Balance, params=acc)},
        "/v1/accounts/{account_id}/statement": {"get": _op("Ledger lines (JSON, or CSV with Accept: text/csv)", None, None, params=acc)},
        "/v1/calls": {"post": _op("Submit a call: gate, auction and routing plan", m.CallRequest, m.DecisionResponse, headers=("Idempotency-Key-Optional",))},
        "/v1/calls/{call_id}": {"get": _op("The call, its decision, events and money", None, None, params=call)},
        "/v1/calls/{call_id}/events": {"post": _op("connected / completed / failed", m.CallEvent, m.EventResponse, params=call, headers=("Idempotency-Key",))},
        "/v1/calls/{call_id}/refund": {"post": _op("Refund part or the rest of a call's charge (operator); a reversing entry", m.RefundRequest, m.RefundResponse, "201", call, headers=("Idempotency-Key-Optional",))},
        "/v1/audit": {"get": _op("Audit records by call_id, number and from/to (operator), oldest first; after_seq and limit page", None, None)},
        "/v1/suppressions": {"post": _op("Add a permanent opt-out (operator: exchange scope; buyer: its own)", m.Suppression, None, "201")},
        "/healthz": {"get": _op("Liveness", None, None, security=False)},
        "/readyz": {"get": _op("Readiness", None, None, security=False)},
        "/metrics": {"get": _op("Prometheus metrics", None, None, security=False)},
    }
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
    }


_DOC = msgspec.json.encode(document())


async def openapi(request: Request) -> Response:
    return Response(_DOC, media_type="application/json")
