"""HTTP bidders over HTTP only: a buyer's campaigns sent without a socket, and their pings.

- ``POST /v1/campaigns`` (a buyer): the body of the ``campaign`` message (``type`` and ``seq``
  optional), created or replaced exactly as over ``/v1/buyers/ws`` → ``200 {"id", "buyer",
  "rtb", "ping"}``. A campaign with a ``ping`` is checked first (exchange.pingspec, and its
  URL's addresses, exchange.ssrf): ``422`` with the JSON path at fault. So a buyer that answers
  pings over HTTP never needs a WebSocket client at all.
- ``GET /v1/pings``: ``{"campaigns": [{"buyer", "campaign", "url", "method", "in_flight",
  "pings", "bids", "no_bids": {reason: n}, "last_no_bid_reason", "last_http_status",
  "answer_p50_ms", "answer_p99_ms"}]}``: a buyer sees its own campaigns, the operator every one.
  The reasons are those of ``exchange.pingspec.NO_BID_REASONS`` (``late``, ``malformed``,
  ``unmapped``, ...). Counts are kept in memory since the exchange started.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from routing.standing import CampaignError

from .access import auth
from .errors import Invalid
from .http import _exchange, body, reply
from .messages import Campaign
from .pingspec import compile_ping
from .ssrf import UrlRefused


async def post_campaign(request: Request) -> Response:
    buyer = auth(request, "buyer")
    msg: Campaign = await body(request, Campaign)
    ex = _exchange(request)
    plan = None
    try:
        if msg.ping is not None:
            plan = compile_ping(msg.ping, msg.rtb)
            if not ex.pings.check_literal(plan):
                await ex.pings.check(plan)
        ex.core.upsert_campaign(buyer.id, msg, ex.clock.now_ns())
    except CampaignError as exc:
        raise Invalid(exc.code, str(exc), exc.path) from None
    except UrlRefused as exc:
        raise Invalid("invalid_url", str(exc), "$.ping.url") from None
    ex.pings.register((buyer.id, msg.id), plan)
    ex.metrics.campaign_upserts += 1
    return reply({"id": msg.id, "buyer": buyer.id, "rtb": msg.rtb, "ping": plan is not None})


async def get_pings(request: Request) -> Response:
    caller = auth(request, "operator", "buyer")
    for name in request.query_params:
        raise Invalid("invalid_query", f"unknown query parameter {name!r}", f"$.{name}")
    pings = _exchange(request).pings
    return reply({"campaigns": pings.view(None if caller.kind == "operator" else caller.id)})
