"""``GET /v1/events?after=&limit=&types=``: replay the caller's own domain events from a position.

A buyer or publisher gets the events addressed to it (billing.events), the operator every
event, in the market's total order, starting just after ``after`` (an event id; absent or
``0``: the beginning). The answer is ``{"events": [...], "next_cursor": str|null, "position":
str}``: ``next_cursor`` is set when there may be more right now (pass it as ``after``), null
once the caller has everything committed so far; ``position`` is how far this answer read
(resume from it, or from the last event's id, to tail the stream). With ``types`` (a comma
list) a page may come back short or even empty with a ``next_cursor``: the records scanned
had no event of those types.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from billing.events import TYPES, DomainEvent, event_id, parse_position, position, select

from .errors import Invalid
from .access import auth
from .http import _exchange, reply

SCAN_ROWS = 2_000  # audit records read per request at most (a filtered page can come back short)


def _query(request: Request) -> tuple[tuple[int, int], int, frozenset[str] | None]:
    q = request.query_params
    try:
        after = parse_position(q.get("after", ""))
    except ValueError as exc:
        raise Invalid("invalid_query", str(exc), "$.after") from None
    try:
        limit = int(q.get("limit", "100"))
    except ValueError:
        raise Invalid("invalid_query", "limit must be an integer", "$.limit") from None
    if not 1 <= limit <= 1000:
        raise Invalid("invalid_query", "limit must be between 1 and 1000", "$.limit")
    types = None
    if q.get("types"):
        types = frozenset(t.strip() for t in q["types"].split(",") if t.strip())
        unknown = sorted(types - set(TYPES))
        if unknown:
            raise Invalid("invalid_query", f"unknown event types {unknown}; known: {', '.join(TYPES)}", "$.types")
    return after, limit, types


async def get_events(request: Request) -> Response:
    caller = auth(request, "operator", "buyer", "publisher")
    after, limit, types = _query(request)
    ex = _exchange(request)
    viewer = None if caller.kind == "operator" else caller.id
    events: list[DomainEvent] = []
    seq, index = after
    from_seq = seq if index < 999 else seq + 1
    scanned, more, last_row = 0, False, None
    with ex.journal.reading():
        while True:
            chunk = min(SCAN_ROWS - scanned, max(limit, 100))
            rows = await ex.journal.store.event_rows(viewer, from_seq, chunk)
            scanned += len(rows)
            events += select(rows, viewer, after, types, limit - len(events))
            if rows:
                last_row = rows[-1].seq
            if len(events) >= limit:
                more = True
                break
            if len(rows) < chunk:  # the end of what is committed
                break
            if scanned >= SCAN_ROWS:
                more = True
                break
            from_seq = rows[-1].seq + 1
    if len(events) >= limit:
        at = events[-1].id
    elif last_row is not None:
        at = position(last_row)
    else:
        at = "0" if after == (0, 999) else event_id(*after)
    return reply({"events": events, "next_cursor": at if more else None, "position": at})
