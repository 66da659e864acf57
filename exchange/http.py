"""The HTTP API: publishers' calls and events, accounts and money, compliance data, health.

Every handler authenticates first, reads the body under a size limit, decodes it into a
typed Struct (errors carry the JSON path) and answers with msgspec-encoded JSON. Errors
always have the body ``{"error": {"code", "message", "path"?}}``.
"""

from __future__ import annotations

import csv
import io

import msgspec
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from billing.postings import buyer_account

from .accounts import Account, bearer
from .instants import rfc3339, to_ns
from .lifecycle import event_response
from .messages import (
    AccountCreate, AccountCreated, AwareTime, Balance, BadInput, CallEvent, CallRequest, Deposit, DecisionResponse,
    ErrorBody, ErrorDetail, Suppression, decode_body, json_encoder,
)
from .service import CallRejected, Exchange

JSON = "application/json"


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, path: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.path, self.headers = status, code, path, headers


def reply(obj: object, status: int = 200) -> Response:
    return Response(json_encoder.encode(obj), status_code=status, media_type=JSON)


def error_response(status: int, code: str, message: str, path: str | None = None, headers: dict | None = None) -> Response:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, path=path))
    return Response(json_encoder.encode(body), status_code=status, media_type=JSON, headers=headers)


def _exchange(request: Request) -> Exchange:
    return request.app.state.exchange


def auth(request: Request, *roles: str) -> Account:
    account = _exchange(request).accounts.authenticate(bearer(request.headers.get("authorization")))
    if account is None:
        raise HttpError(401, "unauthorized", "missing or unknown API key", headers={"WWW-Authenticate": "Bearer"})
    if account.kind not in roles:
        raise HttpError(403, "forbidden", f"this endpoint is not open to {account.kind} keys")
    return account


async def body(request: Request, type_: type) -> object:
    limit = _exchange(request).settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HttpError(413, "body_too_large", f"bodies are limited to {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, "body_too_large", f"bodies are limited to {limit} bytes")
        chunks.append(chunk)
    return decode_body(b"".join(chunks), type_)


def _account(ex: Exchange, account_id: str, caller: Account) -> Account:
    acct = ex.accounts.by_id.get(account_id)
    if acct is None or (caller.kind != "operator" and caller.id != account_id):
        raise HttpError(404, "unknown_account", f"no account {account_id!r}")
    return acct


# ------------------------------------------------------------------ accounts and money
async def create_account(request: Request) -> Response:
    auth(request, "operator")
    req: AccountCreate = await body(request, AccountCreate)  # type: ignore[assignment]
    acct, key = _exchange(request).create_account(req.kind, req.name, req.credit_limit_cents)
    return reply(AccountCreated(id=acct.id, kind=acct.kind, name=acct.name, api_key=key, credit_limit_cents=acct.credit_limit_cents), 201)


async def create_deposit(request: Request) -> Response:
    caller = auth(request, "operator")
    ex = _exchange(request)
    acct = _account(ex, request.path_params["account_id"], caller)
    if acct.kind != "buyer":
        raise HttpError(422, "invalid_account", "deposits are made to buyer accounts", "$")
    dep: Deposit = await body(request, Deposit)  # type: ignore[assignment]
    try:
        created = ex.deposit(acct, dep.amount_cents, dep.reference)
    except ValueError as exc:  # same reference, different amount
        raise HttpError(409, "idempotency_conflict", str(exc), "$.reference") from None
    return reply(_balance(ex, acct), 201 if created else 200)


def _balance(ex: Exchange, acct: Account) -> Balance:
    ledger = ex.core.ledger
    name = buyer_account(acct.id) if acct.kind == "buyer" else f"publisher:{acct.id}"
    bal, held = ledger.balance(name), ledger.held.get(name, 0)
    return Balance(balance_cents=bal, held_cents=held, available_cents=bal - held, credit_limit_cents=ledger.credit.get(name, 0))


async def get_balance(request: Request) -> Response:
    caller = auth(request, "operator", "buyer", "publisher")
    ex = _exchange(request)
    return reply(_balance(ex, _account(ex, request.path_params["account_id"], caller)))


class StatementLine(msgspec.Struct, frozen=True):
    at: str
    kind: str
    reference: str
    amount_cents: int
    balance_cents: int


def _when(raw: str | None, name: str) -> int | None:
    if not raw:
        return None
    try:
        return to_ns(msgspec.json.decode(msgspec.json.encode(raw), type=AwareTime))
    except msgspec.ValidationError:
        raise HttpError(422, "invalid_query", f"{name} must be an RFC 3339 time with a zone", f"$.{name}") from None


async def get_statement(request: Request) -> Response:
    caller = auth(request, "operator", "buyer", "publisher")
    ex = _exchange(request)
    acct = _account(ex, request.path_params["account_id"], caller)
    name = buyer_account(acct.id) if acct.kind == "buyer" else f"publisher:{acct.id}"
    lo, hi = _when(request.query_params.get("from"), "from"), _when(request.query_params.get("to"), "to")
    lines, running = [], 0
    for entry in ex.core.ledger.entries:
        for leg in entry.legs:
            if leg.account != name:
                continue
            running += leg.amount_cents
            if (lo is None or entry.at_ns >= lo) and (hi is None or entry.at_ns < hi):
                lines.append(StatementLine(rfc3339(entry.at_ns), entry.kind, entry.reference, leg.amount_cents, running))
    if "text/csv" in request.headers.get("accept", ""):
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(StatementLine.__struct_fields__)
        w.writerows(msgspec.structs.astuple(x) for x in lines)
        return PlainTextResponse(buf.getvalue(), media_type="text/csv")
    return reply({"account": acct.id, "lines": lines})


# ------------------------------------------------------------------ calls
async def post_call(request: Request) -> Response:
    publisher = auth(request, "publisher")
    call: CallRequest = await body(request, CallRequest)  # type: ignore[assignment]
    try:
        decision = await _exchange(request).submit_call(publisher, call, request.headers.get("idempotency-key"))
    except CallRejected as exc:
        raise HttpError(exc.status, exc.code, str(exc), exc.path) from None
    return reply(DecisionResponse(**msgspec.structs.asdict(decision)))


async def post_event(request: Request) -> Response:
    publisher = auth(request, "publisher", "operator")
    key = request.headers.get("idempotency-key")
    if not key or len(key) > 128:
        raise HttpError(400, "missing_idempotency_key", "events need an Idempotency-Key header (at most 128 characters)")
    ev: CallEvent = await body(request, CallEvent)  # type: ignore[assignment]
    try:
        out = _exchange(request).call_event(publisher, request.path_params["call_id"], key, ev)
    except CallRejected as exc:
        raise HttpError(exc.status, exc.code, str(exc), exc.path) from None
    return reply(out)


async def get_call(request: Request) -> Response:
    account = auth(request, "publisher", "operator")
    ex = _exchange(request)
    try:
        rec = ex.owned_call(account, request.path_params["call_id"])
    except CallRejected as exc:
        raise HttpError(exc.status, exc.code, str(exc)) from None
    return reply({
        "call_id": rec.call_id,
        "status": rec.status,
        "created_at": rfc3339(rec.created_ns),
        "request": rec.request,
        "decision": rec.decision,
        "route_index": rec.index,
        "events": [{"at": rfc3339(t), "event": e, "route_index": k} for t, e, k in rec.history],
        "billable": rec.billable,
        "charged_cents": rec.charged_cents,
        "payout_cents": rec.payout_cents,
        "evidence": rec.evidence,
        "current": event_response(rec),
    })


# ------------------------------------------------------------------ compliance data
async def post_suppression(request: Request) -> Response:
    caller = auth(request, "operator", "buyer")
    sup: Suppression = await body(request, Suppression)  # type: ignore[assignment]
    ex = _exchange(request)
    from compliance.numbers import parse_number

    info = parse_number(sup.number)
    if info is None:
        raise HttpError(422, "invalid_number", f"{sup.number!r} is not a valid phone number", "$.number")
    if caller.kind == "buyer" and sup.scope != "buyer":
        raise HttpError(403, "forbidden", "a buyer may add suppressions of scope buyer only", "$.scope")
    if caller.kind == "operator" and sup.scope == "buyer":
        raise HttpError(422, "invalid_scope", "the operator adds exchange-wide suppressions; buyers add their own", "$.scope")
    scope = "exchange" if sup.scope == "exchange" else f"buyer:{caller.id}"
    created = ex.core.gate.suppressions.add(info.e164, scope, ex.clock.now_ns(), source=caller.id)
    return reply({"number": info.e164, "scope": sup.scope, "created": created}, 201 if created else 200)


# ------------------------------------------------------------------ health
async def healthz(request: Request) -> Response:
    return reply({"status": "ok"})


async def readyz(request: Request) -> Response:
    ex = _exchange(request)
    if not ex.ready:
        return error_response(503, "not_ready", "the exchange is starting or draining")
    return reply({"status": "ready", "campaigns": len(ex.core.book)})


async def metrics(request: Request) -> Response:
    ex = _exchange(request)
    return PlainTextResponse(ex.metrics.render(ex.gauges()), media_type="text/plain; version=0.0.4")


# ------------------------------------------------------------------ error handlers
async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return error_response(exc.status, exc.code, str(exc), exc.path, exc.headers)


async def on_bad_input(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadInput)
    return error_response(exc.status, exc.detail.code, exc.detail.message, exc.detail.path)


async def on_starlette_http(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    return error_response(status, code, str(getattr(exc, "detail", "")) or code)


async def on_crash(request: Request, exc: Exception) -> Response:
    return error_response(500, "internal_error", "the exchange failed to handle this request")
