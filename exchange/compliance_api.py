"""The "Compliance data" endpoints of PROTOCOL.md (``POST /v1/suppressions`` is in ``http``).

* ``POST /v1/dnc/national?snapshot_date=YYYY-MM-DD[&kind=full|changes][&force=true]`` (admin):
  the request body is the FTC file itself (zip, gzip or text; ``--data-binary @file``). It is
  streamed to disk, imported in a worker thread and swapped in atomically; a corrupt or
  unusable file answers 422 ``import_rejected`` and the list in force stays.
* ``POST /v1/dnc/state/{ST}?snapshot_date=...`` (admin): the same for a state's list.
* ``POST /v1/consents`` (publisher or admin): a consent record; 201 created, 200 when the same
  record is posted again, 409 when the token already names a different record *of the same
  poster*: tokens are scoped per publisher (the operator's are exchange-wide), so a publisher
  learns nothing of another's tokens, and a call's ``consent_token`` names the submitting
  publisher's record (else the operator's).
* ``POST /v1/consents/{token}/revoke`` (admin, buyer or publisher; optional body
  ``{"revoked_at"?, "channel"?, "scope"?}``): marks the consent revoked and puts its number
  on the internal DNC, exchange-wide (a buyer's revocation: that buyer only). A publisher
  may revoke only the consents it posted, a buyer only those naming it among the sellers;
  any other token answers 404, as an unknown one does. The operator's revocation covers every
  record of the token.
"""

from __future__ import annotations

import asyncio
import os
import re
from datetime import date
from pathlib import Path

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from compliance.importer import ImportAborted
from compliance.numbers import parse_number
from compliance.runtime import ComplianceRuntime

from .errors import Conflict, Forbidden, Invalid, NotFound, TooLarge
from .access import auth
from .http import body, reply
from .instants import rfc3339, to_ns
from .messages import ConsentCreate, ConsentRevoke
from .service import Exchange

_STATE = re.compile(r"^[A-Z]{2}$")


def _exchange(request: Request) -> Exchange:
    return request.app.state.exchange


def _runtime(request: Request) -> ComplianceRuntime:
    return _exchange(request).compliance


def _snapshot_date(request: Request) -> str:
    raw = request.query_params.get("snapshot_date")
    try:
        date.fromisoformat(raw or "")
    except ValueError:
        raise Invalid("invalid_query", "snapshot_date (the download date, YYYY-MM-DD) is required",
                        "$.snapshot_date") from None
    assert raw is not None
    return raw


async def _spool_upload(request: Request, runtime: ComplianceRuntime, name: str) -> Path:
    """Stream the request body to a file in the data directory (never all in memory)."""
    limit = runtime.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise TooLarge("body_too_large", f"uploads are limited to {limit} bytes")
    root = runtime.dir
    root.mkdir(parents=True, exist_ok=True)
    path = root / f".upload-{name}-{os.getpid()}-{id(request)}"
    size = 0
    try:
        with open(path, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLarge("body_too_large", f"uploads are limited to {limit} bytes")
                f.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if size == 0:
        path.unlink(missing_ok=True)
        raise Invalid("empty_upload", "the request body must be the list file", "$")
    return path


async def _import(request: Request, kind: str, state: str | None) -> Response:
    auth(request, "operator")
    runtime = _runtime(request)
    snapshot = _snapshot_date(request)
    mode = request.query_params.get("kind", "full")
    if mode not in ("full", "changes") or (mode == "changes" and kind != "national"):
        raise Invalid("invalid_query", "kind is full or (national only) changes", "$.kind")
    force = request.query_params.get("force") in ("1", "true")
    path = await _spool_upload(request, runtime, kind)
    try:
        report = await asyncio.to_thread(runtime.import_list, kind, [path], snapshot, state, mode == "changes", None, force)
    except ImportAborted as exc:
        raise Invalid("import_rejected", f"{exc}; the list in force is unchanged") from None
    except ValueError as exc:
        raise Invalid("invalid_query", str(exc)) from None
    finally:
        path.unlink(missing_ok=True)
    runtime.apply(await asyncio.to_thread(runtime.scan))  # this process swaps now; the others within seconds
    out = report.as_dict()
    out["files"] = ["(upload)"]
    return reply(out, 201)


async def post_national(request: Request) -> Response:
    return await _import(request, "national", None)


async def post_state(request: Request) -> Response:
    state = request.path_params["state"]
    if not _STATE.match(state):
        raise Invalid("invalid_state", "the state is a two-letter code such as TX", "$.state")
    return await _import(request, "state", state)


def _instant(at: object, name: str) -> int:
    """An aware time the stores can hold (years 1900..2200), else a 422 naming the field."""
    try:
        ns = to_ns(at)  # type: ignore[arg-type]
        rfc3339(ns)
    except (OverflowError, ValueError, OSError):
        ns = None
    if ns is None or not -(70 * 365 * 86_400 * 10**9) < ns < 7_258_118_400 * 10**9:
        raise Invalid("invalid_time", f"{name} is out of range", f"$.{name}")
    return ns


async def post_consent(request: Request) -> Response:
    caller = auth(request, "operator", "publisher")
    req: ConsentCreate = await body(request, ConsentCreate)
    info = parse_number(req.phone)
    if info is None or info.npa is None:
        raise Invalid("invalid_number", f"{req.phone!r} is not a valid NANP phone number", "$.phone")
    record = msgspec.to_builtins(req)
    record["phone"] = info.e164
    record["created_at"] = rfc3339(_instant(req.created_at, "created_at"))
    if req.expires_at is not None:
        record["expires_at"] = rfc3339(_instant(req.expires_at, "expires_at"))
    record.pop("token", None)
    try:
        status = _runtime(request).add_consent(req.token, record, caller.id if caller.kind == "publisher" else "")
    except ValueError as exc:
        raise Invalid("invalid_consent", str(exc)) from None
    if status == "conflict":
        raise Conflict("consent_conflict", "this token already names a different consent record", "$.token")
    return reply({"token": req.token, "phone": info.e164, "created": status == "created"}, 201 if status == "created" else 200)


async def post_revoke(request: Request) -> Response:
    caller = auth(request, "operator", "buyer", "publisher")
    ex = _exchange(request)
    if request.headers.get("content-length") in (None, "0") and "transfer-encoding" not in request.headers:
        req = ConsentRevoke()
    else:
        req = await body(request, ConsentRevoke)
    if caller.kind == "buyer":
        if req.scope == "exchange":
            raise Forbidden("forbidden", "a buyer's revocation applies to that buyer only", "$.scope")
        scope = f"buyer:{caller.id}"
    else:
        if req.scope == "buyer":
            raise Invalid("invalid_scope", "buyer-scoped revocations are made with the buyer's key", "$.scope")
        scope = "exchange"
    at_ns = _instant(req.revoked_at, "revoked_at") if req.revoked_at is not None else ex.clock.now_ns()
    token = request.path_params["token"]
    consents = ex.compliance.stores.consents
    if caller.kind == "publisher":  # a tenant revokes only a consent it is party to; others' tokens are unknown to it
        party = consents.record(token, caller.id) is not None
    else:
        party = caller.kind == "operator" or any(caller.id in c.sellers for c in consents.all(token))
    if not party:
        raise NotFound("unknown_consent", f"no consent with token {token!r}")
    rec = ex.compliance.revoke(token, at_ns, req.channel or "api", scope, caller.id, caller.id if caller.kind == "publisher" else None)
    if rec is None:
        raise NotFound("unknown_consent", f"no consent with token {token!r}")
    return reply({"token": token, "number": rec.phone, "revoked_at": rfc3339(rec.revoked_ns), "scope": scope})
