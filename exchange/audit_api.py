"""``GET /v1/audit``: the operator's view of the audit trail, numbers opened (billing.keystore).

Queried by ``call_id``, ``number`` (looked up by its blind index) and a ``from``/``to`` range,
oldest first, paged by ``after_seq``. Each record shows the consumer's ``number`` opened
(``"erased"`` once its key was destroyed) and its stored blind index (``number_hash``); the
body is shown with its numbers opened too, so it is not the stored text the record's ``hash``
covers (``python -m exchange audit verify`` checks the stored rows).
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from billing import keystore

from .errors import Invalid
from .http import _exchange, _when, auth, reply
from .instants import rfc3339


async def get_audit(request: Request) -> Response:
    """Operator only: audit records by call, number and time range (oldest first, paged by seq)."""
    auth(request, "operator")
    ex = _exchange(request)
    q = request.query_params
    call_id, number = q.get("call_id") or None, q.get("number") or None
    if number is not None:
        from compliance.numbers import parse_number

        info = parse_number(number)
        if info is None:
            raise Invalid("invalid_number", f"{number!r} is not a valid phone number", "$.number")
        number = info.e164
    lo, hi = _when(q.get("from"), "from"), _when(q.get("to"), "to")
    try:
        limit = min(max(int(q.get("limit", "100")), 1), 1000)
        after = min(max(int(q.get("after_seq", "0")), 0), (1 << 63) - 1)
    except ValueError:
        raise Invalid("invalid_query", "limit and after_seq must be integers") from None
    if call_id is None and number is None and lo is None and hi is None:
        raise Invalid("invalid_query", "give call_id, number or a from/to time range")
    vault = ex.journal.vault
    with ex.journal.reading():
        rows = await ex.journal.store.audit_query(call_id, vault.blind(number) if vault is not None and number else number,
                                                  lo, hi, limit, after)
        shown = await keystore.reveal(ex.journal.store, vault, rows)
    # the numbers opened for the operator ("erased" once shredded); "number_hash" and the hashes are the stored ones
    records = [{
        "seq": r.seq, "at": rfc3339(r.at_ns), "kind": r.kind, "call_id": r.call_id, "number": s.number,
        "number_hash": r.number, "body": msgspec.Raw(s.body.encode()), "prev_hash": r.prev_hash.hex(), "hash": r.hash.hex(),
    } for r, s in zip(rows, shown)]
    return reply({"records": records, "next_after_seq": rows[-1].seq if len(rows) == limit else None})
