"""``/v1/privacy``: the operator's consumer-privacy tools (exchange.privacy). Operator only.

- ``POST /v1/privacy/erasures`` ``{"number"}`` → ``200 {"number_hash", "keys_destroyed",
  "erased_at"}``: every stored trace of the number made unreadable (crypto-shredding); a
  number never seen succeeds the same (``keys_destroyed`` 0); ``409 legal_hold`` while the
  number is under a hold; ``422 invalid_number`` (``$.number``).
- ``POST /v1/privacy/holds`` ``{"number", "reason"?}`` → ``201`` (``200`` if it already was)
  ``{"number_hash", "reason", "created_at"}``: retention and erasure spare the number;
  ``GET /v1/privacy/holds`` → ``{"holds": [...]}``; ``DELETE /v1/privacy/holds/{number_hash}``
  → ``200 {"released": true}`` or ``404``. Holds are named by the number's hash, so no
  number travels in a URL or a log.
- ``POST /v1/privacy/key-rotations`` → ``200 {"master_key_id", "rewrapped", "keys"}``: the
  master key file is read again, its first key seals from now on and every stored key is
  re-wrapped under it, while the exchange keeps running.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from billing.vault import MasterKeyError
from compliance.numbers import parse_number

from .errors import Conflict, Invalid, NotFound
from .http import _exchange, auth, body, reply
from .privacy_wire import ErasureRequest, LegalHoldRequest
from .privacy import HeldError


def _e164(raw: str) -> str:
    info = parse_number(raw)
    if info is None:
        raise Invalid("invalid_number", "not a valid phone number", "$.number")
    return info.e164


async def post_erasure(request: Request) -> Response:
    auth(request, "operator")
    req: ErasureRequest = await body(request, ErasureRequest)
    number = _e164(req.number)
    ex = _exchange(request)
    try:
        with ex.journal.reading():
            out = await ex.privacy.erase(number, ex.clock.now_ns())
    except HeldError:
        raise Conflict("legal_hold", "the number is under a legal hold: release the hold before erasing it", "$.number") from None
    return reply(out)


async def post_hold(request: Request) -> Response:
    auth(request, "operator")
    req: LegalHoldRequest = await body(request, LegalHoldRequest)
    number = _e164(req.number)
    ex = _exchange(request)
    with ex.journal.reading():
        view, created = await ex.privacy.hold(number, req.reason, ex.clock.now_ns())
    return reply(view, 201 if created else 200)


async def get_holds(request: Request) -> Response:
    auth(request, "operator")
    ex = _exchange(request)
    with ex.journal.reading():
        return reply({"holds": await ex.privacy.holds()})


async def delete_hold(request: Request) -> Response:
    auth(request, "operator")
    ex = _exchange(request)
    with ex.journal.reading():
        released = await ex.privacy.release(request.path_params["number_hash"], ex.clock.now_ns())
    if not released:
        raise NotFound("not_found", "no legal hold of that number hash")
    return reply({"released": True})


async def post_rotation(request: Request) -> Response:
    auth(request, "operator")
    ex = _exchange(request)
    try:
        with ex.journal.reading():
            return reply(await ex.privacy.rotate(ex.clock.now_ns()))
    except MasterKeyError as exc:
        raise Conflict("master_key", str(exc)) from None
