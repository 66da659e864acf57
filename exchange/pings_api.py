"""``GET /v1/pings``: a buyer's HTTP-bidder campaigns and what their pings came to.

``{"campaigns": [{"buyer", "campaign", "url", "method", "in_flight", "pings", "bids",
"no_bids": {reason: n}, "last_no_bid_reason", "last_http_status", "answer_p50_ms",
"answer_p99_ms"}]}``: a buyer sees its own campaigns, the operator every one. The reasons are
those of ``exchange.pingspec.NO_BID_REASONS`` (``late``, ``malformed``, ``unmapped``, ...).
Counts are kept in memory since the exchange started.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from .errors import Invalid
from .access import auth
from .http import _exchange, reply


async def get_pings(request: Request) -> Response:
    caller = auth(request, "operator", "buyer")
    for name in request.query_params:
        raise Invalid("invalid_query", f"unknown query parameter {name!r}", f"$.{name}")
    pings = _exchange(request).pings
    return reply({"campaigns": pings.view(None if caller.kind == "operator" else caller.id)})
