"""The HTTP API: publishers' calls and events, accounts and money, compliance data, health.

Every handler authenticates first, reads the body under a size limit, decodes it into a
typed Struct (errors carry the JSON path) and answers with msgspec-encoded JSON. Errors
always have the body ``{"error": {"code", "message", "path"?}}``.

Authentication and its rate limits are in ``access``.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import AsyncIterator
from typing import TypeVar

import msgspec

from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response

from .access import auth
from .accounts import Account
from .errors import (
    BadRequest, Conflict, Forbidden, Invalid, NotFound, RateLimited, Refused, TooLarge, Unauthenticated, Unavailable,
)
from .codec import decode_body
from .instants import rfc3339, to_ns
from .messages import (
    AccountCreate, AccountCreated, AwareTime, Balance, CallEvent, CallRequest, Deposit, DecisionResponse,
    ErrorBody, ErrorDetail, RefundLeg, RefundRequest, RefundResponse, Suppression, json_encoder,
)
from .service import Exchange

JSON = "application/json"
log = logging.getLogger("exchange.http")
T = TypeVar("T")


# The one mapping of a refusal's kind to its HTTP status.
STATUS: dict[type[Refused], int] = {
    BadRequest: 400, Unauthenticated: 401, Forbidden: 403, NotFound: 404, Conflict: 409, TooLarge: 413, Invalid: 422,
    RateLimited: 429, Unavailable: 503,
}


def status_of(exc: Refused) -> int:
    for kind in type(exc).__mro__:
        status = STATUS.get(kind)
        if status is not None:
            return status
    return 422


def reply(obj: object, status: int = 200) -> Response:
    return Response(json_encoder.encode(obj), status_code=status, media_type=JSON)


def error_response(status: int, code: str, message: str, path: str | None = None, headers: dict | None = None) -> Response:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, path=path))
    return Response(json_encoder.encode(body), status_code=status, media_type=JSON, headers=headers)


def _exchange(conn: HTTPConnection) -> Exchange:
    return conn.app.state.exchange


async def body(request: Request, type_: type[T]) -> T:
    limit = _exchange(request).settings.max_body_bytes
    return decode_body(await read_body(request.stream(), request.headers.get("content-length"), limit), type_)


DISCARD_MAX = 16 << 20  # a refused body up to this size is read and dropped before the 413


def too_large(limit: int) -> TooLarge:
    return TooLarge("body_too_large", f"bodies are limited to {limit} bytes", headers={"Connection": "close"})


async def read_body(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    """The body from ``chunks`` (at most ``limit`` bytes), else ``413`` with ``Connection:
    close``. A body over the limit (declared or counted) is first read and dropped up to
    ``DISCARD_MAX``: a client that sends it whole without ``Expect: 100-continue`` (Python's
    urllib) then reads the 413 instead of a connection reset."""
    if declared is not None:
        if not declared.isdigit():
            raise too_large(limit)
        if int(declared) > limit:
            if int(declared) <= DISCARD_MAX:
                async for _ in chunks:
                    pass
            raise too_large(limit)
    out: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            async for chunk in chunks:
                size += len(chunk)
                if size > DISCARD_MAX:
                    break
            raise too_large(limit)
        out.append(chunk)
    return b"".join(out)


def _account(ex: Exchange, account_id: str, caller: Account) -> Account:
    acct = ex.accounts.by_id.get(account_id)
    if acct is None or (caller.kind != "operator" and caller.id != account_id):
        raise NotFound("unknown_account", f"no account {account_id!r}")
    return acct


# ------------------------------------------------------------------ accounts and money
async def create_account(request: Request) -> Response:
    auth(request, "operator")
    req: AccountCreate = await body(request, AccountCreate)
    acct, key = await _exchange(request).treasury.create_account(req.kind, req.name, req.credit_limit_cents)
    return reply(AccountCreated(id=acct.id, kind=acct.kind, name=acct.name, api_key=key, credit_limit_cents=acct.credit_limit_cents), 201)


async def _move_money(request: Request, kind: str) -> Response:
    """A deposit to a buyer or a payout to a publisher (operator), idempotent by reference."""
    caller = auth(request, "operator")
    ex = _exchange(request)
    acct = _account(ex, request.path_params["account_id"], caller)
    party = "buyer" if kind == "deposit" else "publisher"
    if acct.kind != party:
        raise Invalid("invalid_account", f"{kind}s are made to {party} accounts", "$")
    req: Deposit = await body(request, Deposit)
    move = ex.treasury.deposit if kind == "deposit" else ex.treasury.payout
    created = await move(acct, req.amount_cents, req.reference)
    return reply(_balance(ex, acct), 201 if created else 200)


async def create_deposit(request: Request) -> Response:
    return await _move_money(request, "deposit")


async def create_payout(request: Request) -> Response:
    return await _move_money(request, "payout")


def _balance(ex: Exchange, acct: Account) -> Balance:
    bal, held, credit = ex.treasury.balance(acct)
    return Balance(balance_cents=bal, held_cents=held, available_cents=bal - held, credit_limit_cents=credit)


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
        ns = to_ns(msgspec.json.decode(msgspec.json.encode(raw), type=AwareTime))
    except (msgspec.ValidationError, OverflowError, ValueError):
        raise Invalid("invalid_query", f"{name} must be an RFC 3339 time with a zone", f"$.{name}") from None
    if not -(1 << 62) < ns < 1 << 62:  # outside 1823..2116: not a time the ledger can hold
        raise Invalid("invalid_query", f"{name} is out of range", f"$.{name}")
    return ns


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 128:
        raise BadRequest("invalid_idempotency_key", "an Idempotency-Key has 1 to 128 characters")
    return key


async def get_statement(request: Request) -> Response:
    caller = auth(request, "operator", "buyer", "publisher")
    ex = _exchange(request)
    acct = _account(ex, request.path_params["account_id"], caller)
    lo, hi = _when(request.query_params.get("from"), "from"), _when(request.query_params.get("to"), "to")
    with ex.journal.reading():
        running, rows = await ex.journal.store.statement(ex.treasury.ledger_account(acct), lo, hi)
    opening, lines = running, []
    for r in rows:
        running += r.amount_cents
        lines.append(StatementLine(rfc3339(r.at_ns), r.kind, r.reference, r.amount_cents, running))
    if "text/csv" in request.headers.get("accept", ""):
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(StatementLine.__struct_fields__)
        w.writerows(msgspec.structs.astuple(x) for x in lines)
        return PlainTextResponse(buf.getvalue(), media_type="text/csv")
    return reply({"account": acct.id, "opening_balance_cents": opening, "closing_balance_cents": running, "lines": lines})


# ------------------------------------------------------------------ calls
async def post_call(request: Request) -> Response:
    publisher = auth(request, "publisher")
    call: CallRequest = await body(request, CallRequest)
    decision = await _exchange(request).desk.submit(publisher, call, idempotency_key(request))
    return reply(DecisionResponse(**msgspec.structs.asdict(decision)))


async def post_event(request: Request) -> Response:
    publisher = auth(request, "publisher", "operator")
    key = request.headers.get("idempotency-key")
    if not key or len(key) > 128:
        raise BadRequest("missing_idempotency_key", "events need an Idempotency-Key header (at most 128 characters)")
    ev: CallEvent = await body(request, CallEvent)
    out = await _exchange(request).desk.event(publisher, request.path_params["call_id"], key, ev)
    return reply(out)


async def post_refund(request: Request) -> Response:
    """Operator only: reverse part (``amount_cents``) or the rest of a call's charge."""
    auth(request, "operator")
    req: RefundRequest = await body(request, RefundRequest)
    reference = req.reference or idempotency_key(request)
    if not reference:
        raise BadRequest("missing_reference", "a refund needs a reference (body) or an Idempotency-Key header", "$.reference")
    entry, created, total, charged = await _exchange(request).treasury.refund(request.path_params["call_id"], req.amount_cents, reference, req.reason)
    return reply(RefundResponse(
        call_id=request.path_params["call_id"], reference=reference, refund_cents=entry.legs[0].amount_cents,
        refunded_total_cents=total, charged_cents=charged, at=rfc3339(entry.at_ns),
        legs=[RefundLeg(account=a, amount_cents=c) for a, c in entry.legs],
    ), 201 if created else 200)


# ------------------------------------------------------------------ compliance data
async def post_suppression(request: Request) -> Response:
    caller = auth(request, "operator", "buyer")
    sup: Suppression = await body(request, Suppression)
    ex = _exchange(request)
    from compliance.numbers import parse_number

    info = parse_number(sup.number)
    if info is None:
        raise Invalid("invalid_number", f"{sup.number!r} is not a valid phone number", "$.number")
    if caller.kind == "buyer" and sup.scope != "buyer":
        raise Forbidden("forbidden", "a buyer may add suppressions of scope buyer only", "$.scope")
    if caller.kind == "operator" and sup.scope == "buyer":
        raise Invalid("invalid_scope", "the operator adds exchange-wide suppressions; buyers add their own", "$.scope")
    scope = "exchange" if sup.scope == "exchange" else f"buyer:{caller.id}"
    created = ex.core.gate.suppressions.add(info.e164, scope, ex.clock.now_ns(), source=caller.id)
    return reply({"number": info.e164, "scope": sup.scope, "created": created}, 201 if created else 200)


# ------------------------------------------------------------------ health
async def healthz(request: Request) -> Response:
    return reply({"status": "ok"})


LEDGER_STATES = {
    "starting": "the ledger writer is starting",
    "down": "the ledger database is unreachable; the writer keeps its records and retries",
    "stopped": "the ledger writer stopped: the database refused a batch",
}


async def readyz(request: Request) -> Response:
    ex = _exchange(request)
    if not ex.ready:
        return error_response(503, "not_ready", "the exchange is starting or draining")
    writer = ex.journal.writer
    if writer.state != "up":  # the database's own text is for the operator's log, not for anyone asking
        return error_response(503, "ledger_" + writer.state, LEDGER_STATES.get(writer.state, "the ledger writer is not up"))
    if ex.node is not None and not ex.node.fresh():
        return error_response(503, "node_stale", "this node has lost its lease in its market: it takes no call")
    return reply({"status": "ready", "campaigns": len(ex.core.book), "ledger": ex.journal.store.backend, **ex.node_fields()})


async def metrics(request: Request) -> Response:
    ex = _exchange(request)
    return PlainTextResponse(ex.metrics.render(ex.gauges()), media_type="text/plain; version=0.0.4")


# ------------------------------------------------------------------ error handlers
async def on_refused(request: Request, exc: Exception) -> Response:
    """Every ``Refused`` raised by a handler or an owner: its status from ``STATUS``, its
    ``Retry-After`` and extra headers, the body ``{"error": {code, message, path}}``."""
    assert isinstance(exc, Refused)
    headers = dict(exc.headers or {})
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    return error_response(status_of(exc), exc.code, exc.message, exc.path, headers or None)


async def on_starlette_http(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    return error_response(status, code, str(getattr(exc, "detail", "")) or code)


async def on_disconnect(request: Request, exc: Exception) -> Response:
    """A client gone before its body was read: one log line, no traceback; the answer goes nowhere."""
    log.info("client_disconnected", extra={"path": request.url.path, "method": request.method})
    return Response(status_code=400)


async def on_crash(request: Request, exc: Exception) -> Response:
    return error_response(500, "internal_error", "the exchange failed to handle this request")
